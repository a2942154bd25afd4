#include "eval/perplexity.h"

#include "model/sampler.h"

#include <polarquant/error.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace polarquant::eval {

namespace {

// Scored positions of one chunk for one run: log-probabilities of every scored position, kept as
// floats (ctx/2 x vocab) for the baseline only.
struct ChunkRun {
  std::vector<float> logits;  // scored positions x vocab (raw logits)
  size_t kv_bytes = 0;
  size_t kv_fp16_bytes = 0;
  double seconds = 0.0;
};

// One runtime per codec for the whole evaluation (on a GPU it holds a copy of the weights); each
// chunk is a fresh sequence, freed once scored.
std::unique_ptr<model::Runtime> make_codec_runtime(const model::LlamaModel& m,
                                                   const CodecChoice& codec,
                                                   const model::RuntimeOptions& base, size_t ctx) {
  model::RuntimeOptions rt = base;
  rt.key_codec = codec.key_codec;
  rt.value_codec = codec.value_codec;
  rt.max_sequences = 1;
  rt.max_context = ctx;
  return model::make_runtime(m, rt);
}

ChunkRun run_chunk(model::Runtime& tf, const int* tokens, size_t ctx, size_t first, size_t* done,
                   size_t total, const std::function<void(size_t, size_t)>& progress) {
  const model::RuntimeOptions& rt = tf.options();
  const SequenceId seq = tf.add_sequence();
  ChunkRun r;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> unused;
  // The unscored first part, in steps (only for progress reports), then the scored part with every
  // position's logits; the last token is never fed (nothing to predict after it).
  const size_t step = static_cast<size_t>(std::max(rt.prefill_chunk, 1));
  for (size_t s = 0; s < first; s += step) {
    const size_t n = std::min(step, first - s);
    tf.forward(seq, tokens + s, n, unused, false);
    *done += n;
    if (progress) progress(*done, total);
  }
  tf.forward(seq, tokens + first, ctx - 1 - first, r.logits, true);
  *done += ctx - first;
  if (progress) progress(*done, total);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const KvMemoryStats mem = tf.memory();
  r.kv_bytes = mem.total_bytes;
  r.kv_fp16_bytes = mem.fp16_bytes;
  tf.free_sequence(seq);
  return r;
}

}  // namespace

double quantile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double pos = p * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

PerplexityReport evaluate_perplexity(const model::LlamaModel& m, const std::vector<int>& tokens,
                                     const PerplexityConfig& config) {
  const size_t ctx = static_cast<size_t>(config.ctx);
  if (config.ctx < 16 || config.ctx > m.config().context_length) {
    throw_invalid("perplexity ctx " + std::to_string(config.ctx) + " must be in 16.." +
                  std::to_string(m.config().context_length) + " (the model's context)");
  }
  size_t chunks = tokens.size() / ctx;
  if (chunks == 0) {
    throw_invalid("the text has " + std::to_string(tokens.size()) +
                  " tokens, fewer than one chunk of " + std::to_string(ctx));
  }
  if (config.max_chunks > 0) chunks = std::min(chunks, static_cast<size_t>(config.max_chunks));
  const size_t first = ctx / 2;
  const size_t vocab = static_cast<size_t>(m.config().vocab_size);
  const size_t scored_per_chunk = ctx - 1 - first;
  const size_t total = chunks * ctx * (1 + config.codecs.size());
  size_t done = 0;

  PerplexityReport report;
  report.ctx = config.ctx;
  report.chunks = chunks;
  report.baseline.codec = config.baseline;
  std::vector<double> base_nll;
  std::vector<std::vector<double>> nll(config.codecs.size()), kld(config.codecs.size());
  std::vector<size_t> agree(config.codecs.size());
  report.codecs.resize(config.codecs.size());
  std::vector<double> lp(vocab), lq(vocab);
  const std::unique_ptr<model::Runtime> base_runtime =
      make_codec_runtime(m, config.baseline, config.runtime, ctx);
  std::vector<std::unique_ptr<model::Runtime>> runtimes;
  for (const CodecChoice& codec : config.codecs)
    runtimes.push_back(make_codec_runtime(m, codec, config.runtime, ctx));

  for (size_t c = 0; c < chunks; ++c) {
    const int* chunk = tokens.data() + c * ctx;
    const ChunkRun base =
        run_chunk(*base_runtime, chunk, ctx, first, &done, total, config.progress);
    report.baseline.seconds += base.seconds;
    report.baseline.kv_bytes = base.kv_bytes;
    report.baseline.kv_fp16_bytes = base.kv_fp16_bytes;
    for (size_t i = 0; i < scored_per_chunk; ++i) {
      model::log_softmax(base.logits.data() + i * vocab, vocab, lp.data());
      base_nll.push_back(-lp[static_cast<size_t>(chunk[first + i + 1])]);
    }
    for (size_t k = 0; k < config.codecs.size(); ++k) {
      const ChunkRun run =
          run_chunk(*runtimes[k], chunk, ctx, first, &done, total, config.progress);
      CodecQuality& q = report.codecs[k];
      q.codec = config.codecs[k];
      q.seconds += run.seconds;
      q.kv_bytes = run.kv_bytes;
      q.kv_fp16_bytes = run.kv_fp16_bytes;
      for (size_t i = 0; i < scored_per_chunk; ++i) {
        const float* ref = base.logits.data() + i * vocab;
        const float* got = run.logits.data() + i * vocab;
        model::log_softmax(ref, vocab, lp.data());
        model::log_softmax(got, vocab, lq.data());
        double kl = 0.0;
        for (size_t j = 0; j < vocab; ++j) kl += std::exp(lp[j]) * (lp[j] - lq[j]);
        kld[k].push_back(std::max(kl, 0.0));  // rounding can give -1e-17 for identical rows
        nll[k].push_back(-lq[static_cast<size_t>(chunk[first + i + 1])]);
        agree[k] += model::argmax(ref, vocab) == model::argmax(got, vocab);
      }
    }
  }
  auto mean = [](const std::vector<double>& v) {
    double s = 0.0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / static_cast<double>(v.size());
  };
  report.scored_tokens = base_nll.size();
  report.baseline.ppl = std::exp(mean(base_nll));
  report.baseline.top1_agreement = 1.0;
  for (size_t k = 0; k < config.codecs.size(); ++k) {
    CodecQuality& q = report.codecs[k];
    q.ppl = std::exp(mean(nll[k]));
    q.kld_mean = mean(kld[k]);
    q.kld_p99 = quantile(kld[k], 0.99);
    q.top1_agreement = static_cast<double>(agree[k]) / static_cast<double>(report.scored_tokens);
  }
  return report;
}

}  // namespace polarquant::eval
