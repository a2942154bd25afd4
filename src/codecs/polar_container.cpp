// The self-describing PolarQuant container (docs/FORMAT.md, "PQVC"): a header with the codec
// configuration, the codebooks when they are not the analytic ones, the codes, and a CRC-32.
#include <polarquant/error.h>
#include <polarquant/polar_codec.h>

#include <cstring>
#include <string>

#include "core/bytes.h"

namespace polarquant {

namespace {
constexpr uint32_t kContainerVersion = 1;
constexpr uint64_t kMaxCount = uint64_t{1} << 40;
}  // namespace

std::vector<uint8_t> PolarCodec::pack(const float* x, size_t n) const {
  std::vector<uint8_t> codes(n * code_bytes_);
  encode(x, n, codes.data());
  const std::vector<uint8_t> books =
      config_.codebooks.empty() ? std::vector<uint8_t>{} : serialize_codebooks(config_.codebooks);
  ByteWriter w;
  w.raw("PQVC", 4);
  w.u32(kContainerVersion);
  w.u32(static_cast<uint32_t>(config_.dim));
  w.u32(static_cast<uint32_t>(config_.levels));
  w.u32(static_cast<uint32_t>(config_.radius));
  w.u32(static_cast<uint32_t>(config_.rotation));
  w.u64(config_.seed);
  w.u64(n);
  w.u32(static_cast<uint32_t>(books.size()));
  for (int b : config_.bits) w.u8(static_cast<uint8_t>(b));
  w.raw(books.data(), books.size());
  w.raw(codes.data(), codes.size());
  w.u32(crc32(w.bytes().data(), w.bytes().size()));
  return std::move(w.bytes());
}

PolarCodec::Unpacked PolarCodec::unpack(const uint8_t* data, size_t size) {
  ByteReader r(data, size, "PolarQuant container");
  if (std::memcmp(r.take(4, "magic"), "PQVC", 4) != 0) {
    r.fail("not a PolarQuant container (magic is not PQVC)");
  }
  const uint32_t version = r.u32("version");
  if (version != kContainerVersion) {
    r.fail("unsupported container version " + std::to_string(version) + " (this build reads " +
           std::to_string(kContainerVersion) + ")");
  }
  PolarConfig config;
  const uint32_t dim = r.u32("dim");
  const uint32_t levels = r.u32("levels");
  const uint32_t radius = r.u32("radius_precision");
  const uint32_t rotation = r.u32("rotation_kind");
  config.seed = r.u64("seed");
  const uint64_t count = r.u64("count");
  const uint32_t book_bytes = r.u32("codebook_bytes");
  if (dim < 2 || dim > 65536) r.fail("dim " + std::to_string(dim) + " is outside [2, 65536]");
  if (levels < 1 || levels > 16) r.fail("levels " + std::to_string(levels) + " is outside [1, 16]");
  if (radius > 2) r.fail("radius precision code " + std::to_string(radius) + " is not 0, 1 or 2");
  if (rotation > 2) r.fail("rotation kind code " + std::to_string(rotation) + " is not 0, 1 or 2");
  if (count > kMaxCount) r.fail("vector count " + std::to_string(count) + " is implausibly large");
  config.dim = static_cast<int>(dim);
  config.levels = static_cast<int>(levels);
  config.radius = static_cast<RadiusPrecision>(radius);
  config.rotation = static_cast<RotationKind>(rotation);
  config.bits.resize(levels);
  for (auto& b : config.bits) b = r.u8("bits");
  if (book_bytes > 0) {
    const uint8_t* books = r.take(book_bytes, "codebooks");
    config.codebooks = deserialize_codebooks(books, book_bytes, "PolarQuant container codebooks");
  }
  try {
    config.validate();
  } catch (const Error& e) {
    r.fail(std::string("invalid codec configuration: ") + e.what());
  }
  // Check sizes and the checksum before building the codec: a corrupt header must not make us
  // generate a rotation for a nonsense dimension.
  const uint64_t code_bytes = (config.payload_bits() + 7) / 8;
  if (count > r.remaining() / code_bytes) {
    r.fail("truncated: " + std::to_string(count) + " vectors of " + std::to_string(code_bytes) +
           " bytes do not fit in the remaining " + std::to_string(r.remaining()) + " bytes");
  }
  const uint8_t* codes = r.take(count * code_bytes, "codes");
  const size_t payload = r.position();
  const uint32_t stored = r.u32("crc32");
  if (stored != crc32(data, payload)) r.fail("checksum mismatch: the container is corrupt");
  if (r.remaining() != 0) r.fail(std::to_string(r.remaining()) + " unexpected trailing bytes");
  const PolarCodec codec(config);
  Unpacked out;
  out.config = config;
  out.count = count;
  out.vectors.resize(count * dim);
  codec.decode(codes, count, out.vectors.data());
  return out;
}

}  // namespace polarquant
