// The comparison runner: codes every head with each codec pair and measures it (compare.h).
#include "eval/compare.h"

#include <polarquant/attention.h>
#include <polarquant/codec.h>
#include <polarquant/codec_pair.h>
#include <polarquant/error.h>
#include <polarquant/half.h>
#include <polarquant/kv_cache.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <memory>

#include "eval/distortion.h"

namespace polarquant {
namespace {

// Queries per head used for the inner-product error (it costs queries x tokens x dim).
constexpr size_t kIpQueries = 16;

// Codes tokens [0, n) of x the way the cache stores them: the last `recent` tokens, and the
// tokens of a partial group after the last full one, stay in fp16; the rest is coded in whole
// groups. Writes the reconstruction to x_hat and returns the bytes stored.
size_t reconstruct(const Codec& codec, const float* x, size_t n, size_t recent, float* x_hat) {
  const size_t d = static_cast<size_t>(codec.dim());
  const size_t group = static_cast<size_t>(codec.group_size());
  const size_t coded = n - std::min(recent, n);
  const size_t groups = coded / group;
  std::vector<uint8_t> codes(groups * codec.group_bytes());
  if (groups > 0) {
    codec.encode(x, groups, codes.data());
    codec.decode(codes.data(), groups, x_hat);
  }
  for (size_t i = groups * group * d; i < n * d; ++i) {
    // Tokens the cache would keep in full precision; stored and counted as fp16.
    if (!std::isfinite(x[i])) throw_invalid("compare: non-finite input value");
    x_hat[i] = round_to_half(x[i]);
  }
  return codes.size() + 2 * d * (n - groups * group);
}

// CPU time of the calling thread in seconds. Throughput is measured in thread CPU time, not wall
// time: every timed call runs on this one thread (cache_attention with n_threads = 1, codecs are
// single-threaded), and CPU time does not count the time other processes on a shared machine take.
double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Runs `work` until at least min_seconds of thread CPU time have passed; returns calls per second.
template <typename Work>
double rate(double min_seconds, Work&& work) {
  size_t calls = 0;
  const double start = thread_seconds();
  double elapsed = 0.0;
  do {
    work();
    ++calls;
    elapsed = thread_seconds() - start;
  } while (elapsed < min_seconds);
  return static_cast<double>(calls) / std::max(elapsed, 1e-9);
}

// Cached tokens per second of cache_attention (one thread, one query over the whole first head):
// the cache's fused kernel where the codec has one, its decode-then-attend path otherwise.
double cache_attention_rate(const CompareData& data, const CodecPair& pair,
                            const CompareOptions& opt) {
  const CompareHead& head = data.heads.front();
  const size_t n = head.tokens(data.dim);
  KvCacheOptions cache_options;
  cache_options.n_layers = 1;
  cache_options.n_kv_heads = 1;
  cache_options.head_dim = data.dim;
  cache_options.key_codec = pair.key;
  cache_options.value_codec = pair.value;
  cache_options.seed = opt.seed;
  cache_options.recent_tokens = static_cast<int>(opt.recent_tokens);
  KvCache cache(cache_options);
  const SequenceId seq = cache.add_sequence();
  cache.append(seq, 0, head.k.data(), head.v.data(), n);
  AttentionOptions attention;
  attention.n_threads = 1;
  std::vector<float> out(static_cast<size_t>(data.dim));
  return static_cast<double>(n) * rate(opt.min_seconds, [&] {
           cache_attention(cache, seq, 0, head.q.data(), 1, 1, out.data(), attention);
         });
}

CompareRow measure(const CompareData& data, const std::string& name, const CompareOptions& opt) {
  const CodecPair pair = codec_pair(name);
  const auto key_codec = make_codec(pair.key, data.dim, opt.seed);
  const auto value_codec = make_codec(pair.value, data.dim, opt.seed);
  const size_t d = static_cast<size_t>(data.dim);
  CompareRow row;
  row.codec = name;
  row.key_codec = pair.key;
  row.value_codec = pair.value;

  size_t key_bytes = 0, value_bytes = 0, coords = 0;
  double k_err = 0, k_ref = 0, v_err = 0, v_ref = 0, ip_err_sq = 0, ip_weight = 0;
  AttentionErrorStats attention;
  for (const CompareHead& head : data.heads) {
    const size_t n = head.tokens(data.dim);
    std::vector<float> k_hat(n * d), v_hat(n * d);
    key_bytes += reconstruct(*key_codec, head.k.data(), n, opt.recent_tokens, k_hat.data());
    value_bytes += reconstruct(*value_codec, head.v.data(), n, opt.recent_tokens, v_hat.data());
    coords += n * d;
    // Per-head NMSE terms, pooled over heads.
    const double ek = nmse(head.k.data(), k_hat.data(), n * d);
    const double ev = nmse(head.v.data(), v_hat.data(), n * d);
    double rk = 0, rv = 0;
    for (size_t i = 0; i < n * d; ++i)
      rk += double(head.k[i]) * head.k[i], rv += double(head.v[i]) * head.v[i];
    k_err += ek * rk, k_ref += rk, v_err += ev * rv, v_ref += rv;

    const size_t n_q = head.query_keys.size();
    const size_t ip_q = std::min(n_q, kIpQueries);
    const double e =
        inner_product_error(head.k.data(), k_hat.data(), n, head.q.data(), ip_q, data.dim);
    // Weight each head's squared relative error by its reference energy: sum the numerators.
    double ip_ref = 0;
    for (size_t a = 0; a < ip_q; ++a) {
      for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (size_t j = 0; j < d; ++j) s += double(head.q[a * d + j]) * head.k[i * d + j];
        ip_ref += s * s;
      }
    }
    ip_err_sq += e * e * ip_ref;
    ip_weight += ip_ref;

    const double scale = 1.0 / std::sqrt(static_cast<double>(data.dim));
    std::vector<double> p(n), p_hat(n), out(d), out_hat(d);
    for (size_t a = 0; a < n_q; ++a) {
      const size_t m = head.query_keys[a];
      attend(head.q.data() + a * d, head.k.data(), head.v.data(), m, data.dim, scale, p.data(),
             out.data());
      attend(head.q.data() + a * d, k_hat.data(), v_hat.data(), m, data.dim, scale, p_hat.data(),
             out_hat.data());
      attention.add(p.data(), p_hat.data(), m, out.data(), out_hat.data(), data.dim);
    }
  }
  row.key_bits = 8.0 * static_cast<double>(key_bytes) / static_cast<double>(coords);
  row.value_bits = 8.0 * static_cast<double>(value_bytes) / static_cast<double>(coords);
  row.bits_per_coordinate = 0.5 * (row.key_bits + row.value_bits);
  row.compression_vs_fp16 = 16.0 / row.bits_per_coordinate;
  row.nmse_k = k_ref > 0 ? k_err / k_ref : 0;
  row.nmse_v = v_ref > 0 ? v_err / v_ref : 0;
  row.nmse = 0.5 * (row.nmse_k + row.nmse_v);
  row.inner_product_error = ip_weight > 0 ? std::sqrt(ip_err_sq / ip_weight) : 0;
  row.attention_error = attention.output_error();
  row.softmax_kl = attention.mean_kl();

  // Throughput on the first head, single-threaded, whole groups only.
  const CompareHead& head = data.heads.front();
  const size_t n = head.tokens(data.dim);
  const size_t kg = n / static_cast<size_t>(key_codec->group_size());
  const size_t vg = n / static_cast<size_t>(value_codec->group_size());
  std::vector<uint8_t> kc(kg * key_codec->group_bytes()), vc(vg * value_codec->group_bytes());
  row.encode_vectors_per_s =
      static_cast<double>(kg * key_codec->group_size() + vg * value_codec->group_size()) *
      rate(opt.min_seconds, [&] {
        key_codec->encode(head.k.data(), kg, kc.data());
        value_codec->encode(head.v.data(), vg, vc.data());
      });
  std::vector<float> k_hat(n * d), v_hat(n * d);
  std::vector<double> p(n), out(d);
  const size_t m = std::min(kg * key_codec->group_size(), vg * value_codec->group_size());
  if (m > 0) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(data.dim));
    row.attention_tokens_per_s = static_cast<double>(m) * rate(opt.min_seconds, [&] {
                                   key_codec->decode(kc.data(), kg, k_hat.data());
                                   value_codec->decode(vc.data(), vg, v_hat.data());
                                   attend(head.q.data(), k_hat.data(), v_hat.data(), m, data.dim,
                                          scale, p.data(), out.data());
                                 });
  }
  row.cache_attention_tokens_per_s = cache_attention_rate(data, pair, opt);
  return row;
}

}  // namespace

std::vector<std::string> default_compare_codecs() {
  std::vector<std::string> names;
  for (const auto& n : codec_pair_names()) {
    if (n != "f32") names.push_back(n);
  }
  return names;
}

std::vector<CompareRow> run_compare(const CompareData& data, const CompareOptions& options) {
  if (data.heads.empty()) throw_invalid("compare: no data to compare on");
  const std::vector<std::string> names =
      options.codecs.empty() ? default_compare_codecs() : options.codecs;
  std::vector<CompareRow> rows;
  for (const auto& name : names) rows.push_back(measure(data, name, options));
  return rows;
}

}  // namespace polarquant
