#include "dataflow/collate.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "sharding/dataset_gen.h"

namespace vlorch::dataflow {
namespace {

CollateInput Sample(const std::string& key, std::vector<int32_t> ids, int image_position, std::string jpeg) {
  CollateInput in;
  in.key = key;
  in.encoded.input_ids = ids;
  in.encoded.labels.assign(ids.size(), kIgnoreIndex);
  in.encoded.labels.back() = ids.back();
  in.encoded.image_position = image_position;
  in.jpeg = std::move(jpeg);
  return in;
}

TEST(CollateTest, PadsMasksAndPlacesImages) {
  CollateOptions o;
  o.pad_id = 99;
  o.image.size = 32;
  std::string jpg = sharding::EncodeTestJpeg(48, 40, 1);
  std::vector<CollateInput> in = {Sample("a", {1, 7, 7, 5}, 1, jpg), Sample("text", {1, 3, 4, 5, 6, 2}, -1, ""),
                                  Sample("b", {1, 9, 7, 7, 8}, 2, sharding::EncodeTestJpeg(64, 64, 2))};
  auto b = Collate(in, o);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->input_ids.sizes(), (std::vector<int64_t>{3, 8}));  // longest 6, rounded to 8
  EXPECT_EQ(b->input_ids[0][3].item<int64_t>(), 5);
  EXPECT_EQ(b->input_ids[0][4].item<int64_t>(), 99);
  at::Tensor lengths = b->attention_mask.sum(1);
  EXPECT_EQ(std::vector<int64_t>(lengths.data_ptr<int64_t>(), lengths.data_ptr<int64_t>() + 3),
            (std::vector<int64_t>{4, 6, 5}));
  EXPECT_EQ(b->labels[1][5].item<int64_t>(), 2);
  EXPECT_EQ(b->labels[1][6].item<int64_t>(), kIgnoreIndex);
  EXPECT_EQ(b->images.sizes(), (std::vector<int64_t>{2, 3, 32, 32}));
  EXPECT_EQ(b->image_positions[0][0].item<int64_t>(), 0);
  EXPECT_EQ(b->image_positions[0][1].item<int64_t>(), 1);
  EXPECT_EQ(b->image_positions[1][0].item<int64_t>(), 2);
  EXPECT_EQ(b->image_positions[1][1].item<int64_t>(), 2);
  // The image tensor holds exactly what DecodeClipFloat writes.
  std::vector<float> want(3 * 32 * 32);
  ASSERT_TRUE(DecodeClipFloat(jpg, o.image, want.data()).ok());
  EXPECT_TRUE(at::equal(b->images[0].reshape({-1}), at::from_blob(want.data(), {3 * 32 * 32}, at::kFloat)));
  EXPECT_EQ(b->keys, (std::vector<std::string>{"a", "text", "b"}));
}

TEST(CollateTest, UndecodableImagesAreSkippedAndCounted) {
  CollateOptions o;
  o.image.size = 16;
  o.uint8_images = true;
  std::vector<CollateInput> in = {Sample("bad", {1, 7, 2}, 1, "not a jpeg"),
                                  Sample("good", {1, 7, 2}, 1, sharding::EncodeTestJpeg(32, 32, 3))};
  auto b = Collate(in, o);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->skipped_images, 1);
  EXPECT_EQ(b->keys, std::vector<std::string>{"good"});
  EXPECT_EQ(b->images.scalar_type(), at::kByte);
  EXPECT_EQ(b->images.size(0), 1);
  EXPECT_EQ(b->image_positions[0][0].item<int64_t>(), 0);
  auto none = Collate({Sample("bad", {1, 7, 2}, 1, "x")}, o);
  EXPECT_EQ(none.status().code(), StatusCode::kInvalidArgument);
}

// The pool hands a buffer out again only once nothing else refers to its memory.
TEST(StagingPoolTest, ReusesOnlyReleasedBuffers) {
  StagingPool pool(2);
  at::Tensor a = pool.Acquire({2, 3, 4, 4}, at::kFloat);
  const void* a_mem = a.data_ptr();
  at::Tensor b = pool.Acquire({2, 3, 4, 4}, at::kFloat);
  EXPECT_NE(b.data_ptr(), a_mem);  // a is still held
  at::Tensor view = a.narrow(0, 1, 1);
  a.reset();
  at::Tensor c = pool.Acquire({2, 3, 4, 4}, at::kFloat);
  EXPECT_NE(c.data_ptr(), a_mem);  // a view of a's memory is still alive
  EXPECT_EQ(pool.size(), 2u);      // c is beyond the capacity: not kept
  view.reset();
  at::Tensor d = pool.Acquire({1, 3, 4, 4}, at::kFloat);  // smaller fits in a's buffer
  EXPECT_EQ(d.data_ptr(), a_mem);
  EXPECT_EQ(d.sizes(), (std::vector<int64_t>{1, 3, 4, 4}));
  d.reset();
  b.reset();
  // Larger than any free buffer: a free one is replaced, the pool does not grow.
  at::Tensor e = pool.Acquire({4, 3, 4, 4}, at::kFloat);
  EXPECT_EQ(pool.size(), 2u);
  const void* e_mem = e.data_ptr();
  e.reset();
  EXPECT_EQ(pool.Acquire({4, 3, 4, 4}, at::kFloat).data_ptr(), e_mem);
  EXPECT_EQ(pool.Acquire({4, 3, 4, 4}, at::kByte).scalar_type(), at::kByte);
}

// Batches collated from a pool own their images until they are dropped.
TEST(StagingPoolTest, CollatedBatchesDoNotShareLiveImages) {
  CollateOptions o;
  o.image.size = 16;
  o.staging_pool = std::make_shared<StagingPool>(4);
  std::vector<CollateInput> one = {Sample("a", {1, 7, 5}, 1, sharding::EncodeTestJpeg(40, 30, 1))};
  std::vector<CollateInput> two = {Sample("b", {1, 7, 5}, 1, sharding::EncodeTestJpeg(40, 30, 2))};
  auto first = Collate(one, o);
  ASSERT_TRUE(first.ok());
  at::Tensor kept = first->images.clone();
  auto second = Collate(two, o);
  ASSERT_TRUE(second.ok());
  EXPECT_NE(first->images.data_ptr(), second->images.data_ptr());
  EXPECT_TRUE(at::equal(first->images, kept));  // not overwritten by the second batch
  const void* mem = first->images.data_ptr();
  *first = Batch{};
  auto third = Collate(one, o);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->images.data_ptr(), mem);  // the dropped batch's buffer came back
  EXPECT_TRUE(at::equal(third->images, kept));
}

}  // namespace
}  // namespace vlorch::dataflow
