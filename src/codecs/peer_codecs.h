// The peer KV-cache codecs (bf16, llama.cpp q8_0/q4_0 with and without Hadamard rotation, KIVI,
// QJL, TurboQuant-mse) behind the Codec interface, and helpers they share. Byte layouts:
// docs/design/peers.md.
#pragma once

#include <polarquant/codec.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace polarquant::codecs {

// Names make_peer_codec accepts, in display order.
std::vector<std::string> peer_codec_names();
// The codec for a peer name, or nullptr when the name is not a peer codec. Throws InvalidArgument
// when the dimension does not suit the codec.
std::unique_ptr<Codec> make_peer_codec(std::string_view name, int dim, uint64_t seed);

// Per-family factories (the name selects the variant). Each throws InvalidArgument for a dim it
// cannot code.
std::unique_ptr<Codec> make_bf16_codec(int dim);
std::unique_ptr<Codec> make_block_codec(std::string_view name, int dim, uint64_t seed);  // q8_0..
std::unique_ptr<Codec> make_kivi_key_codec(int bits, int dim);    // kivi2k, kivi4k
std::unique_ptr<Codec> make_kivi_value_codec(int bits, int dim);  // kivi2v, kivi4v
std::unique_ptr<Codec> make_qjl_codec(int projections, int dim, uint64_t seed);
std::unique_ptr<Codec> make_turbo_codec(int bits, int dim, uint64_t seed);

// Throws InvalidArgument naming the codec, vector and coordinate of the first non-finite value in
// n vectors of dim floats.
void check_finite(const char* codec, const float* x, size_t n, int dim);
// fp16 bits of v; throws InvalidArgument naming `what` when v overflows fp16.
uint16_t checked_half(float v, const char* codec, const char* what, size_t group);
// The fp16 value at p; throws Format naming `what` and the group when it is not finite.
float stored_half(const uint8_t* p, const char* codec, const char* what, size_t group);

// Gaussian Lloyd-Max quantizer for N(0, 1): 2^bits centroids, ascending, computed by Lloyd's
// iteration on the exact density (deterministic, no data). bits in 1..8.
std::vector<double> gaussian_lloyd_max(int bits);
// Mean squared error of that quantizer on N(0, 1) (1 - E[c^2] at the fixed point).
double gaussian_lloyd_max_mse(const std::vector<double>& centroids);

}  // namespace polarquant::codecs
