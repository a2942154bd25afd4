// Reconstruction quality of a codec on a set of vectors: CodecStats and measure_codec are public
// (include/polarquant/stats.h) so that the Python bindings can use them.
#pragma once

#include <polarquant/stats.h>
