// Software prefetch for the kernels' random reads: into L2, not L1.
//
// A kernel prefetches a window of hundreds of lines before reading them (see the
// windows in hashed_bag.cpp). Asked for L1 (prefetcht0, __builtin_prefetch's default),
// that many lines measured 1.5 to 2x slower on the AMD EPYC this project is measured on
// than the same prefetches into L2 (prefetcht1): element mode's 8 tables, forward 31-41
// -> 21 ms, update 44 -> 20 ms; a non-temporal prefetch was as slow as L1. L1 holds 512
// lines, so a window's lines evicted one another there before they were read.
#pragma once

namespace torchrec_ext {

inline void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }

}  // namespace torchrec_ext
