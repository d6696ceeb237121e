// Checksums used by the on-disk formats (shard store records, checkpoint manifests).
//
// CRC32C (Castagnoli), the checksum of iSCSI, ext4 metadata and RocksDB's blocks: hardware
// instructions on x86-64 CPUs with SSE4.2 (checked at run time), a table otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace vlorch {

// CRC32C of data, continuing from `crc` (0 to start). Crc32c("123456789") == 0xE3069283.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);
inline uint32_t Crc32c(std::string_view s, uint32_t crc = 0) { return Crc32c(s.data(), s.size(), crc); }

namespace internal {
// The table implementation, always; for tests on machines that take the hardware path.
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc = 0);
}  // namespace internal

}  // namespace vlorch
