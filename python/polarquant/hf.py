"""A transformers KV cache that stores keys and values with polarquant's codecs.

    from transformers import AutoModelForCausalLM
    from polarquant.hf import PolarQuantCache
    cache = PolarQuantCache("paper", model.config)          # or "polar37", "q4_0", "kivi2", ...
    out = model.generate(ids, past_key_values=cache, max_new_tokens=32)
    cache.nbytes()                                          # bytes held: codes + fp windows

Each layer keeps the codes of every (batch, KV head) as uint8 tensors and returns dequantized K/V
to the model's own attention: this measures what the codec costs in quality, not speed (attention
that reads the codes directly, as the C++ cache does, is a later step). By default every token is
quantized, including the prompt, so that figures measure the codec; `residual_length=R` keeps the R
most recent tokens in full precision as transformers' QuantizedCache does. Codecs that code groups
of tokens (KIVI keys: 32) keep a partial group in full precision until it fills.

Written against transformers 5.x's Cache / CacheLayerMixin API (python/requirements.txt pins the
tested versions).
"""
import torch
from transformers.cache_utils import Cache, DynamicLayer

from . import DEFAULT_SEED, Codec, codec_pair


class _Store:
    """The codes of one tensor (keys or values) of one layer, plus its full-precision tail."""

    def __init__(self, codec, residual_length, keep_dequantized):
        self.codec = codec
        self.residual_length = residual_length
        self.keep_dequantized = keep_dequantized
        self.codes = None  # uint8 (batch, heads, groups, group_bytes), CPU
        self.decoded = None  # float32 (batch, heads, tokens, dim), CPU, when keep_dequantized
        self.tail = None  # (batch, heads, tokens, dim), the model's dtype and device

    def append(self, states):
        self.tail = states if self.tail is None else torch.cat([self.tail, states], dim=-2)
        g = self.codec.group_size
        flush = (self.tail.shape[-2] - self.residual_length) // g * g
        if flush <= 0:
            return
        # clone: a view would keep the flushed tokens' full-precision storage alive.
        head, self.tail = self.tail[..., :flush, :], self.tail[..., flush:, :].clone()
        b, h, _, d = head.shape
        rows = head.detach().to(device="cpu", dtype=torch.float32).contiguous().reshape(-1, d)
        codes = self.codec.encode(rows).reshape(b, h, flush // g, -1)
        self.codes = codes if self.codes is None else torch.cat([self.codes, codes], dim=2)
        if self.keep_dequantized:
            new = self.codec.decode(codes.reshape(-1, codes.shape[-1])).reshape(b, h, flush, d)
            self.decoded = new if self.decoded is None else torch.cat([self.decoded, new], dim=2)

    def states(self):
        """All tokens, dequantized codes first, in the tail's dtype and device."""
        if self.codes is None:
            return self.tail
        if self.keep_dequantized:
            x = self.decoded
        else:
            b, h, groups, gb = self.codes.shape
            x = self.codec.decode(self.codes.reshape(-1, gb))
            x = x.reshape(b, h, groups * self.codec.group_size, -1)
        x = x.to(device=self.tail.device, dtype=self.tail.dtype)
        return torch.cat([x, self.tail], dim=-2)

    def select(self, fn):
        """Applies fn (a batch-dimension operation) to everything stored."""
        for name in ("codes", "decoded", "tail"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))

    def nbytes(self):
        codes = 0 if self.codes is None else self.codes.numel()
        tail = 0 if self.tail is None else self.tail.numel() * self.tail.element_size()
        return codes, tail


class PolarQuantLayer(DynamicLayer):
    """One decoder layer's K and V, coded by key_codec and value_codec (polarquant.Codec)."""

    is_croppable = False

    def __init__(self, key_codec, value_codec, residual_length=0, keep_dequantized=False,
                 center_keys=False):
        super().__init__()
        if residual_length < 0:
            raise ValueError(f"residual_length must be >= 0, got {residual_length}")
        self.key_codec, self.value_codec = key_codec, value_codec
        self.residual_length = residual_length
        self.keep_dequantized = keep_dequantized
        self.center_keys = center_keys
        self.cumulative_length = 0
        self._k = self._v = self._key_mean = None

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        for codec, states, what in ((self.key_codec, key_states, "key"),
                                    (self.value_codec, value_states, "value")):
            if states.shape[-1] != codec.dim:
                raise ValueError(f"{what} head_dim is {states.shape[-1]}, but the {what} codec "
                                 f"'{codec.name}' was made for dim {codec.dim}")
        self._k = _Store(self.key_codec, self.residual_length, self.keep_dequantized)
        self._v = _Store(self.value_codec, self.residual_length, self.keep_dequantized)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if key_states.dim() != 4 or value_states.dim() != 4:
            raise ValueError("PolarQuantLayer.update expects (batch, heads, tokens, head_dim) "
                             f"tensors, got {tuple(key_states.shape)} and {tuple(value_states.shape)}")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        if self.center_keys:
            # Keys minus their mean over the first update, per (batch, head): every score of a query
            # moves by the same q.mean, so softmax attention is unchanged, while the codec sees
            # vectors of less energy (the C++ runtime's KvCacheOptions::center_keys).
            if self._key_mean is None:
                self._key_mean = key_states.mean(dim=-2, keepdim=True)
            key_states = key_states - self._key_mean
        self._k.append(key_states)
        self._v.append(value_states)
        # As in transformers' QuantizedLayer, keys / values hold the full-precision part only; the
        # dequantized states are made for this call and not kept (unless keep_dequantized).
        self.keys, self.values = self._k.tail, self._v.tail
        b, h, _, d = key_states.shape
        self._fp16_bytes_per_token = 2 * b * h * (d + value_states.shape[-1])
        return self._k.states(), self._v.states()

    def get_seq_length(self):
        return self.cumulative_length

    def reset(self):
        super().reset()
        self.cumulative_length = 0
        self._k = self._v = self._key_mean = None

    def crop(self, tokens_to_remove):
        raise NotImplementedError("PolarQuantCache does not support crop (assisted decoding)")

    def _select(self, fn):
        if self.is_initialized:
            self._k.select(fn)
            self._v.select(fn)
            if self._key_mean is not None:
                self._key_mean = fn(self._key_mean)
            self.keys, self.values = self._k.tail, self._v.tail

    def reorder_cache(self, beam_idx):
        self._select(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats):
        self._select(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        self._select(lambda t: t[indices.to(t.device) if torch.is_tensor(indices) else indices])

    def nbytes(self):
        """(code bytes, full-precision bytes, bytes an fp16 cache would hold)."""
        if not self.is_initialized:
            return 0, 0, 0
        (kc, kt), (vc, vt) = self._k.nbytes(), self._v.nbytes()
        mean = 0 if self._key_mean is None else self._key_mean.numel() * self._key_mean.element_size()
        return kc + vc, kt + vt + mean, self.cumulative_length * self._fp16_bytes_per_token


class PolarQuantCache(Cache):
    """A transformers Cache whose layers store K and V with polarquant codecs.

    codec: a codec or pair name (polarquant.codec_names(); "kivi2" means kivi2k keys and kivi2v
    values); key_codec / value_codec override it per role. config: the model's config (gives the
    layer count and head_dim); without it, layers are made on first use with the head_dim seen
    then. seed: the codecs' rotation seed (one codec per role, shared by all layers and heads, as
    in the C++ runtime). residual_length: recent tokens kept in full precision (default 0: all
    quantized). keep_dequantized: also keep a float32 copy of the decoded tokens (faster decoding
    steps, no memory saving; the results are identical). center_keys: store keys minus their mean
    over the first update (per layer, batch and head); exact for softmax attention (every score of
    a query shifts by the same amount) and lowers the codec's error on real keys; the returned
    keys are the centered ones.
    """

    def __init__(self, codec="paper", config=None, *, key_codec=None, value_codec=None,
                 seed=DEFAULT_SEED, residual_length=0, keep_dequantized=False, center_keys=False):
        pair = codec_pair(codec)
        self.key_codec_name = key_codec or pair[0]
        self.value_codec_name = value_codec or pair[1]
        self.seed = seed
        self.residual_length = residual_length
        self.keep_dequantized = keep_dequantized
        self.center_keys = center_keys
        self._codecs = {}
        layers = None
        if config is not None:
            text = config.get_text_config(decoder=True)
            head_dim = getattr(text, "head_dim", None) or (
                text.hidden_size // text.num_attention_heads)
            layer_types = getattr(text, "layer_types", None) or []
            if any(t != "full_attention" for t in layer_types):
                raise ValueError("PolarQuantCache supports models with full attention layers "
                                 f"only, got layer types {sorted(set(layer_types))}")
            # Made now, so that a bad codec name fails here rather than in the middle of generate.
            layers = [self._make_layer(head_dim) for _ in range(text.num_hidden_layers)]
        # Cache wants exactly one of layers / layer_class_to_replicate; the lazy path is ours.
        super().__init__(layers=layers if layers is not None else [])
        self._lazy = layers is None

    def _codec(self, name, dim):
        key = (name, dim)
        if key not in self._codecs:
            self._codecs[key] = Codec(name, dim, seed=self.seed)
        return self._codecs[key]

    def _make_layer(self, head_dim):
        return PolarQuantLayer(self._codec(self.key_codec_name, head_dim),
                               self._codec(self.value_codec_name, head_dim),
                               self.residual_length, self.keep_dequantized, self.center_keys)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self._lazy:
            while len(self.layers) <= layer_idx:
                self.layers.append(self._make_layer(key_states.shape[-1]))
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def nbytes(self):
        """Bytes held: {'codes': ..., 'full_precision': ..., 'total': ...,
        'fp16_equivalent': what an fp16 cache would hold for the same tokens}."""
        codes = tail = fp16 = 0
        for layer in self.layers:
            c, t, f = layer.nbytes()
            codes, tail, fp16 = codes + c, tail + t, fp16 + f
        return {"codes": codes, "full_precision": tail, "total": codes + tail,
                "fp16_equivalent": fp16}

    def __repr__(self):
        return (f"PolarQuantCache(keys={self.key_codec_name!r}, values={self.value_codec_name!r}, "
                f"layers={len(self.layers)}, residual_length={self.residual_length})")
