#ifndef CHEAPINFO_H
#define CHEAPINFO_H

#include <stddef.h>

/// Bytes of heap in use (glibc `mallinfo2()`: `uordblks + hblkhd`, all arenas), or 0 where
/// glibc is not available. For tests that measure memory per object.
size_t cheapinfo_heap_in_use(void);

#endif
