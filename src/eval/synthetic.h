// Generated vectors for codec statistics and tests: plain Gaussian, and "key-like" vectors that
// have what real attention keys have and a rotation removes: a few outlier channels and a channel
// mean. gaussian_data and keylike_data are declared in the public include/polarquant/stats.h.
#pragma once

#include <polarquant/stats.h>
