#include <gtest/gtest.h>
#include <polarquant/codebook.h>

#include <nlohmann/json.hpp>

#include <cstdio>

#include "cli_test_util.h"

namespace polarquant {
namespace {

TEST(CliCodecStats, PaperPresetMeetsTheReferenceFigures) {
  const auto r = testing::run_cli("codec-stats --preset paper --dim 128 --count 3000 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto json = nlohmann::json::parse(r.output);
  EXPECT_DOUBLE_EQ(json["bits_per_coordinate"].get<double>(), 3.875);
  const double gauss = json["cases"]["gaussian"]["nmse"].get<double>();
  const double keys = json["cases"]["keylike"]["nmse"].get<double>();
  const double keys_raw = json["cases"]["keylike_unrotated"]["nmse"].get<double>();
  EXPECT_NEAR(gauss, 3.21e-2, 0.03 * 3.21e-2);
  EXPECT_NEAR(keys, gauss, 0.10 * gauss);
  EXPECT_GT(keys_raw, 2.0 * gauss);
}

TEST(CliCodecStats, CustomBitsAndBadOptions) {
  auto r = testing::run_cli("codec-stats --dim 64 --bits 4,3,3,3,3 --count 200 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(r.output)["levels"].get<int>(), 5);
  r = testing::run_cli("codec-stats --dim 64 --bits 4,3,9 --count 10");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("bits[2]"), std::string::npos) << r.output;
  r = testing::run_cli("codec-stats --dim 7 --preset paper");  // odd: no pair to split
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("even dim"), std::string::npos) << r.output;
  r = testing::run_cli("codec-stats --rotation givens");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("hadamard"), std::string::npos) << r.output;
  r = testing::run_cli("codec-stats --codebooks /nonexistent/file.pqcb");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("/nonexistent/file.pqcb"), std::string::npos) << r.output;
}

TEST(CliTrainCodebooks, WritesALoadableFileThatCodecStatsUses) {
  const std::string path = ::testing::TempDir() + "/trained.pqcb";
  auto r = testing::run_cli("train-codebooks --data gaussian --dim 64 --count 1000 -o " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto books = load_codebooks(path);
  ASSERT_EQ(books.size(), 4u);
  EXPECT_EQ(books[0].bits(), 4);
  r = testing::run_cli("codec-stats --dim 64 --count 500 --json --codebooks " + path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const double nmse = nlohmann::json::parse(r.output)["cases"]["gaussian"]["nmse"].get<double>();
  EXPECT_NEAR(nmse, 3.21e-2, 0.1 * 3.21e-2);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace polarquant
