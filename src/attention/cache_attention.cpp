// Fused decode attention over the paged cache: split-K over the context (tasks of whole pages per
// KV head, run on OpenMP threads), an online softmax per task, and a merge of the partial (m, l,
// acc) states. Keys and values are read in their stored form: fp32/fp16 rows directly, PolarQuant
// pages through lookup tables in the rotated domain, any other codec one decoded page at a time.
#include <polarquant/error.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "attention/attention_internal.h"
#include "cache/kv_cache_impl.h"

namespace polarquant {
namespace {

enum class Stored { kF32, kF16, kPolar, kOther };

Stored stored_kind(const PageFormat& format) {
  if (dynamic_cast<const PolarPageFormat*>(&format)) return Stored::kPolar;
  if (format.codec().group_size() == 1 && format.codec().name() == "f32") return Stored::kF32;
  if (format.codec().group_size() == 1 && format.codec().name() == "f16") return Stored::kF16;
  return Stored::kOther;
}

constexpr size_t kRowTile = 64;  // full-precision rows scored per softmax step

// Software prefetch of the regions kPrefetchPages pages ahead, into L2 (prefetcht1): the PolarQuant
// kernels keep their lane accumulators (g x d x 16 floats, 32 KiB for g = 4, d = 128; 8 lanes
// and 16 KiB on AVX2) and level-1
// tables (16 KiB) in L1, which prefetches into L1 would evict. Measured 2026-11-29 (llama shape,
// one thread, ratio of paired medians, docs/BENCHMARKS.md section 2): 1 page ahead into L1 gave
// paper/f16 1.45-1.50x at 16k and 1.40-1.43x at 32k; 2 or 4 pages ahead into L2 1.60-1.62x and
// 1.54x, with the f16 times unchanged within the noise.
constexpr size_t kPrefetchPages = 4;
void prefetch_region(const uint8_t* p, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 0, 2);
  // GCC 12 may delete a loop that only prefetches (it did once run_pages prefetched through a
  // lambda: no prefetcht1 left in the binary, f16 decode 1.7x slower); the empty asm keeps it.
  asm volatile("" ::: "memory");
}

// A contiguous run of positions of one KV head, all in one storage run (sink, pages or tail).
struct Task {
  int kv_head = 0;
  bool coded = false;
  size_t begin = 0, end = 0;  // positions
  // Sliding window: positions [begin, visible) are read (the PolarQuant kernels start at a slot
  // that is a multiple of 16) but masked out of the softmax.
  size_t visible = 0;
};

struct State {
  std::vector<float> m, l, acc, lanes;
};

struct Context {
  const KernelSet& kernels;
  const KvCache::Impl& cache;
  const SequenceLayer& sl;
  int g = 1, dim = 0;
  Stored key_kind, value_kind;
  const std::vector<float>* q_plain;           // n_q_heads x dim, scaled
  const std::vector<PolarTables>* key_tables;  // per KV head (PolarQuant keys)
  const PolarTables* value_tables;             // PolarQuant values
  // RoPE-aware key centering (rope_center.h): per query head, what each page's scores get back.
  const std::vector<PageScoreShift>* page_shifts = nullptr;
};

// Scores of rows [begin, begin + n) of one storage run into scores (g x kRowTile-strided).
void run_rows(const Context& c, const Task& task, State& st, const float* k_rows,
              const float* v_rows, size_t n_rows, std::vector<float>& scores) {
  const size_t stride = c.cache.row_floats;
  const float* q = c.q_plain->data() + static_cast<size_t>(task.kv_head) * c.g * c.dim;
  for (size_t t0 = 0; t0 < n_rows; t0 += kRowTile) {
    const size_t n = std::min(kRowTile, n_rows - t0);
    c.kernels.score_f32(q, c.g, c.dim, k_rows + t0 * stride, stride, n, scores.data(), kRowTile);
    for (int h = 0; h < c.g; ++h) {
      const float alpha = c.kernels.softmax(&scores[h * kRowTile], n, &st.m[h], &st.l[h]);
      if (alpha != 1.0f) {
        for (int j = 0; j < c.dim; ++j) st.acc[h * c.dim + j] *= alpha;
      }
    }
    c.kernels.value_f32(scores.data(), kRowTile, c.g, c.dim, v_rows + t0 * stride, stride, n,
                        st.acc.data());
  }
}

// Pages per softmax step: the scores of up to kChunkTokens tokens (whole pages) are computed
// first, then one softmax step per head, then their values. The PolarQuant kernels' L1 working
// sets, the score tables (g x d/2 x 16 floats) and the value lane accumulators (g x d x 16
// floats), together fill the L1d; alternating them once per page refilled both from L2 every 32
// tokens. Measured (docs/BENCHMARKS.md section 2.7, llama shape, `paper`, one thread, 32k):
// 14.3 ms per page, 12.8 ms at 128 tokens, 12.2 at 256 and 512, 11.8 at 1024; 512 keeps the
// score rows (g x 512 floats) well inside L1 at g = 4.
constexpr size_t kChunkTokens = 512;

size_t chunk_tokens(size_t page_tokens) {
  return std::max<size_t>(1, kChunkTokens / page_tokens) * page_tokens;
}

// One page's share of a chunk: positions [pos, pos + n) at slots [slot, slot + n) of `page`, their
// scores at column `at` of the chunk's score rows.
struct ChunkPage {
  size_t pos, page, slot, n, at;
};

void run_pages(const Context& c, const Task& task, State& st, std::vector<float>& scores,
               std::vector<float>& decoded) {
  const KvCache::Impl& m = c.cache;
  const size_t page_tokens = static_cast<size_t>(m.options.page_tokens);
  const size_t sink = c.sl.sink.size();
  const int h = task.kv_head;
  const size_t group = static_cast<size_t>(m.group);
  const float* q = c.q_plain->data() + static_cast<size_t>(h) * c.g * c.dim;
  const size_t stride = chunk_tokens(page_tokens);  // of the score rows
  // One past the last page the task reads.
  const size_t task_pages = std::min(c.sl.pages, (task.end - sink + page_tokens - 1) / page_tokens);
  // Ask for the regions kPrefetchPages ahead while a page is read (all of the first ones at the
  // task's start): measured faster than leaving it to the hardware prefetcher (docs/BENCHMARKS.md
  // section 2), most of all at slab boundaries. Keys before a page's scores, values before its
  // value pass, so the requests are spread over the work.
  const auto prefetch = [&](const ChunkPage& cp, bool values) {
    const size_t from = cp.pos == task.begin ? cp.page + 1 : cp.page + kPrefetchPages;
    const size_t end = std::min(cp.page + kPrefetchPages + 1, task_pages);
    for (size_t p = from; p < end; ++p) {
      if (values) {
        prefetch_region(m.value_region(c.sl, p, h), m.value_format_of(c.sl).head_bytes());
      } else {
        prefetch_region(m.key_region(c.sl, p, h), m.key_format_of(c.sl).head_bytes());
      }
    }
  };
  std::vector<ChunkPage> chunk;
  chunk.reserve(stride / page_tokens + 1);
  for (size_t pos = task.begin; pos < task.end;) {
    chunk.clear();
    size_t at = 0;
    while (pos < task.end) {  // whole pages (or the task's partial first and last ones)
      const size_t coded = pos - sink;
      const size_t slot = coded % page_tokens;
      const size_t n = std::min(task.end - pos, page_tokens - slot);
      if (at + n > stride) break;
      chunk.push_back({pos, coded / page_tokens, slot, n, at});
      pos += n;
      at += n;
    }
    for (const ChunkPage& cp : chunk) {
      prefetch(cp, false);
      const uint8_t* kreg = m.key_region(c.sl, cp.page, h);
      float* s = scores.data() + cp.at;
      switch (c.key_kind) {
        case Stored::kF32:
          c.kernels.score_f32(q, c.g, c.dim, reinterpret_cast<const float*>(kreg) + cp.slot * c.dim,
                              c.dim, cp.n, s, stride);
          break;
        case Stored::kF16:
          c.kernels.score_f16(q, c.g, c.dim,
                              reinterpret_cast<const uint16_t*>(kreg) + cp.slot * c.dim, c.dim,
                              cp.n, s, stride);
          break;
        case Stored::kPolar:
          c.kernels.score_polar((*c.key_tables)[h], kreg, cp.slot, cp.n, c.g, s, stride);
          break;
        case Stored::kOther: {
          const size_t first = cp.slot / group * group;
          const size_t count = round_up(cp.slot + cp.n, group) - first;
          decoded.resize(count * c.dim);
          m.key_format_of(c.sl).load(kreg, first, count, decoded.data());
          c.kernels.score_f32(q, c.g, c.dim, decoded.data() + (cp.slot - first) * c.dim, c.dim,
                              cp.n, s, stride);
          break;
        }
      }
      if (c.page_shifts != nullptr) {
        for (int i = 0; i < c.g; ++i) {
          const float add = (*c.page_shifts)[static_cast<size_t>(h) * c.g + i](cp.page);
          for (size_t t = 0; t < cp.n; ++t) s[i * stride + t] += add;
        }
      }
      if (cp.pos < task.visible) {
        // The masked prefix shares this chunk with at least one visible position (visible lies in
        // the task's first page), so the running maximum stays finite.
        const size_t masked = std::min(cp.n, task.visible - cp.pos);
        for (int i = 0; i < c.g; ++i) {
          std::fill_n(&s[i * stride], masked, -std::numeric_limits<float>::infinity());
        }
      }
    }
    for (int i = 0; i < c.g; ++i) {
      const float alpha = c.kernels.softmax(&scores[i * stride], at, &st.m[i], &st.l[i]);
      if (alpha == 1.0f) continue;
      if (c.value_kind == Stored::kPolar) {
        const size_t n_lanes = static_cast<size_t>(c.dim) * c.kernels.value_lanes;
        float* lanes = &st.lanes[i * n_lanes];
        for (size_t j = 0; j < n_lanes; ++j) lanes[j] *= alpha;
      } else {
        for (int j = 0; j < c.dim; ++j) st.acc[i * c.dim + j] *= alpha;
      }
    }
    for (const ChunkPage& cp : chunk) {
      prefetch(cp, true);
      const uint8_t* vreg = m.value_region(c.sl, cp.page, h);
      const float* p = scores.data() + cp.at;
      switch (c.value_kind) {
        case Stored::kF32:
          c.kernels.value_f32(p, stride, c.g, c.dim,
                              reinterpret_cast<const float*>(vreg) + cp.slot * c.dim, c.dim, cp.n,
                              st.acc.data());
          break;
        case Stored::kF16:
          c.kernels.value_f16(p, stride, c.g, c.dim,
                              reinterpret_cast<const uint16_t*>(vreg) + cp.slot * c.dim, c.dim,
                              cp.n, st.acc.data());
          break;
        case Stored::kPolar:
          c.kernels.value_polar(*c.value_tables, vreg, cp.slot, cp.n, c.g, p, stride,
                                st.lanes.data());
          break;
        case Stored::kOther: {
          const size_t first = cp.slot / group * group;
          const size_t count = round_up(cp.slot + cp.n, group) - first;
          decoded.resize(count * c.dim);
          m.value_format_of(c.sl).load(vreg, first, count, decoded.data());
          c.kernels.value_f32(p, stride, c.g, c.dim, decoded.data() + (cp.slot - first) * c.dim,
                              c.dim, cp.n, st.acc.data());
          break;
        }
      }
    }
  }
  if (c.value_kind == Stored::kPolar) {
    // Lanes -> one rotated accumulator per head -> back to the original domain (S^T once).
    std::vector<float> rotated(c.dim);
    for (int i = 0; i < c.g; ++i) {
      const int n = c.kernels.value_lanes;
      const float* lanes = &st.lanes[static_cast<size_t>(i) * c.dim * n];
      for (int j = 0; j < c.dim; ++j) {
        float s = 0.0f;
        for (int lane = 0; lane < n; ++lane) s += lanes[j * n + lane];
        rotated[j] = s;
      }
      const auto& polar = static_cast<const PolarPageFormat&>(m.value_format_of(c.sl)).polar();
      polar.rotation().inverse(rotated.data(), &st.acc[i * c.dim], 1);
    }
  }
}

void run_task(const Context& c, const Task& task, State& st) {
  const size_t dim = static_cast<size_t>(c.dim);
  st.m.assign(c.g, -std::numeric_limits<float>::infinity());
  st.l.assign(c.g, 0.0f);
  st.acc.assign(c.g * dim, 0.0f);
  const size_t page_tokens = static_cast<size_t>(c.cache.options.page_tokens);
  std::vector<float> scores(c.g * std::max(kRowTile, chunk_tokens(page_tokens)));
  if (!task.coded) {
    const size_t sink = c.sl.sink.size();
    const size_t off = static_cast<size_t>(task.kv_head) * dim;
    const bool in_sink = task.begin < sink;
    const size_t first = in_sink ? task.begin : task.begin - sink - c.sl.coded;
    const TokenRows& rows = in_sink ? c.sl.sink : c.sl.tail;
    run_rows(c, task, st, rows.k(first) + off, rows.v(first) + off, task.end - task.begin, scores);
    return;
  }
  if (c.value_kind == Stored::kPolar) st.lanes.assign(c.g * dim * c.kernels.value_lanes, 0.0f);
  std::vector<float> decoded;
  run_pages(c, task, st, scores, decoded);
}

}  // namespace

void cache_attention_with(const KernelSet& kernels, const KvCache& cache, SequenceId seq, int layer,
                          const float* q, size_t n_queries, int n_q_heads, float* out,
                          const AttentionOptions& options) {
  const KvCache::Impl& m = cache.impl();
  const SequenceLayer& sl = m.layer(seq, layer, "cache_attention");
  const int n_kv = m.options.n_kv_heads;
  const int dim = m.options.head_dim;
  const float scale =
      check_attention_args("cache_attention", q, n_queries, n_q_heads, n_kv, dim, options);
  if (n_queries == 0) return;
  if (n_queries > sl.length) {
    throw_invalid("cache_attention: " + std::to_string(n_queries) +
                  " queries but the sequence holds only " + std::to_string(sl.length) +
                  " tokens at layer " + std::to_string(layer) + "; append the tokens first");
  }
  const int threads = resolve_threads(options);
  const int g = n_q_heads / n_kv;
  const size_t page_tokens = static_cast<size_t>(m.options.page_tokens);
  const size_t sink = sl.sink.size();

  const Stored key_kind = stored_kind(m.key_format_of(sl));
  const Stored value_kind = stored_kind(m.value_format_of(sl));
  Context c{kernels, m, sl, g, dim, key_kind, value_kind, nullptr, nullptr, nullptr};
  std::vector<float> q_plain(static_cast<size_t>(n_q_heads) * dim);
  std::vector<PolarTables> key_tables(c.key_kind == Stored::kPolar ? n_kv : 0);
  PolarTables value_tables;
  if (c.value_kind == Stored::kPolar) {
    // The sequence-layer's own format: with online codebooks its tables differ from the cache's.
    build_polar_tables(static_cast<const PolarPageFormat&>(m.value_format_of(sl)), nullptr, 0,
                       value_tables, false);
  }
  c.q_plain = &q_plain;
  std::vector<PageScoreShift> page_shifts;
  if (!sl.key_mean_pre.empty() && sl.coded > 0) c.page_shifts = &page_shifts;
  c.key_tables = &key_tables;
  c.value_tables = &value_tables;
  std::vector<float> q_rot(q_plain.size());

  for (size_t qi = 0; qi < n_queries; ++qi) {
    const size_t limit = sl.length - n_queries + qi + 1;
    const float* qq = q + qi * q_plain.size();
    for (size_t i = 0; i < q_plain.size(); ++i) q_plain[i] = qq[i] * scale;
    if (c.page_shifts != nullptr) {
      page_shifts.clear();
      for (int j = 0; j < n_q_heads; ++j) {
        const size_t kv = static_cast<size_t>(j / g) * dim;
        page_shifts.emplace_back(m.rope(layer), q_plain.data() + static_cast<size_t>(j) * dim,
                                 sl.key_mean_pre.data() + kv, sl.key_mean.data() + kv);
      }
    }
    if (c.key_kind == Stored::kPolar) {
      const auto& format = static_cast<const PolarPageFormat&>(m.key_format_of(sl));
      format.polar().rotation().forward(q_plain.data(), q_rot.data(), n_q_heads);
      for (int h = 0; h < n_kv; ++h) {
        build_polar_tables(format, q_rot.data() + static_cast<size_t>(h) * g * dim, g,
                           key_tables[h], kernels.int8_score_tables);
      }
    }
    // Split the runs into tasks: the page run into about 2 * threads / n_kv pieces of whole pages.
    // With a sliding window, positions before `start` are skipped (no window: start is 0 and
    // the tasks are exactly those of plain causal attention).
    const size_t start = options.window > 0 && limit > options.window ? limit - options.window : 0;
    const size_t sink_end = std::min(sink, limit);
    const size_t coded_begin = std::max(sink, start);
    const size_t page_of_begin = (coded_begin - sink) / page_tokens;
    const size_t read_begin =  // coded_begin rounded down to a multiple of 16 slots in its page
        sink + page_of_begin * page_tokens +
        (coded_begin - sink - page_of_begin * page_tokens) / 16 * 16;
    const size_t coded_end = std::min(sink + sl.coded, limit);
    std::vector<Task> tasks;
    for (int h = 0; h < n_kv; ++h) {
      if (sink_end > start) tasks.push_back({h, false, start, sink_end});
      if (coded_end > coded_begin) {
        const size_t pages = (coded_end - sink + page_tokens - 1) / page_tokens - page_of_begin;
        const size_t pieces = std::clamp<size_t>((2 * threads + n_kv - 1) / n_kv, 1, pages);
        for (size_t p = 0; p < pieces; ++p) {
          const size_t b =
              std::max(read_begin, sink + (page_of_begin + pages * p / pieces) * page_tokens);
          const size_t e =
              std::min(coded_end, sink + (page_of_begin + pages * (p + 1) / pieces) * page_tokens);
          if (e > b) tasks.push_back({h, true, b, e, coded_begin});
        }
      }
      const size_t tail_begin = std::max(sink + sl.coded, start);
      if (limit > tail_begin) tasks.push_back({h, false, tail_begin, limit});
    }
    std::vector<State> states(tasks.size());
    const int n_tasks = static_cast<int>(tasks.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && n_tasks > 1)
    for (int i = 0; i < n_tasks; ++i) run_task(c, tasks[i], states[i]);

    // Merge the partial states of each KV head's tasks (tasks are grouped by head, in order).
    float* o = out + qi * q_plain.size();
    for (int h = 0; h < n_kv; ++h) {
      for (int i = 0; i < g; ++i) {
        float mx = -std::numeric_limits<float>::infinity();
        for (size_t t = 0; t < tasks.size(); ++t) {
          if (tasks[t].kv_head == h) mx = std::max(mx, states[t].m[i]);
        }
        float* oh = o + (static_cast<size_t>(h) * g + i) * dim;
        std::fill(oh, oh + dim, 0.0f);
        float l = 0.0f;
        for (size_t t = 0; t < tasks.size(); ++t) {
          if (tasks[t].kv_head != h) continue;
          const float w = std::exp(states[t].m[i] - mx);
          l += w * states[t].l[i];
          const float* acc = &states[t].acc[static_cast<size_t>(i) * dim];
          for (int j = 0; j < dim; ++j) oh[j] += w * acc[j];
        }
        for (int j = 0; j < dim; ++j) oh[j] /= l;
      }
    }
  }
}

}  // namespace polarquant
