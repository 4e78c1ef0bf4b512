// danet-serve's block cache: large blocks kept for the next request of the same size, bounded.
//
// Preloaded (LD_PRELOAD) by danet-serve when `cpu_block_cache` is on (server/allocator.py). A model that
// runs without onnxruntime's CPU arena allocates every activation with malloc; glibc maps each large one
// afresh and unmaps it when freed, so every pass page-faults and zeroes all of its activations again.
// Here every block of at least DANET_BLOCK_CACHE_MIN_MB (default 4 MiB) is mapped by this library and, when
// freed, kept for a later request of exactly the same size (the same layers allocate the same sizes pass
// after pass). A block is mapped afresh only after kept blocks have been unmapped, oldest first, until
// live + kept + the new block is at most the highest live total seen so far: the blocks this library holds
// never exceed the process's own high-water mark of live large blocks, so keeping them adds no peak memory.
// Our maps get transparent huge pages when glibc's do (GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
// Smaller blocks, and alignments over 4 KiB, go to glibc. danet_block_cache_trim() unmaps every kept block
// (danet-serve calls it around each large run, so memory between requests is what is live).
//
// Build: build.sh beside this file (make and the Dockerfile's native stage call it).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <malloc.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static size_t bc_min = 4u << 20;
static int huge_pages;  // madvise(MADV_HUGEPAGE) on our maps, as glibc does with glibc.malloc.hugetlb=1
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
#define REG 8192
static void *reg_ptr[REG];
static size_t reg_size[REG];
#define CACHE 256
static void *cache_ptr[CACHE];
static size_t cache_size[CACHE];
static int cache_n;
static size_t live, kept, hwm;
static unsigned long bc_fresh, bc_reused, bc_evicted;

static size_t slot(void *p) { return ((uintptr_t)p >> 12) * 2654435761u % REG; }

static size_t reg_n;  // live blocks of ours; past 3/4 of REG new blocks go to glibc

static void reg_put(void *p, size_t n) {
  size_t i = slot(p);
  reg_n++;
  while (reg_ptr[i]) i = (i + 1) % REG;
  reg_ptr[i] = p; reg_size[i] = n;
}

static size_t reg_take(void *p) {  // 0 when not ours
  size_t i = slot(p);
  while (reg_ptr[i]) {
    if (reg_ptr[i] == p) {
      size_t n = reg_size[i];
      // delete with backward shift
      size_t j = i;
      for (;;) {
        j = (j + 1) % REG;
        if (!reg_ptr[j]) break;
        size_t k = slot(reg_ptr[j]);
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
          reg_ptr[i] = reg_ptr[j]; reg_size[i] = reg_size[j]; i = j;
        }
      }
      reg_ptr[i] = 0;
      reg_n--;
      return n;
    }
    i = (i + 1) % REG;
  }
  return 0;
}

static size_t reg_find(void *p) {
  size_t i = slot(p);
  while (reg_ptr[i]) { if (reg_ptr[i] == p) return reg_size[i]; i = (i + 1) % REG; }
  return 0;
}

static void *cache_remove(int i) {  // kept block i leaves the cache (the caller holds the lock)
  void *p = cache_ptr[i];
  kept -= cache_size[i];
  memmove(cache_ptr + i, cache_ptr + i + 1, (cache_n - i - 1) * sizeof(void *));
  memmove(cache_size + i, cache_size + i + 1, (cache_n - i - 1) * sizeof(size_t));
  cache_n--;
  return p;
}

static void evict_one(void) {  // the oldest kept block
  size_t n = cache_size[0];
  munmap(cache_remove(0), n);
  bc_evicted++;
}

static size_t our_size(void *p) {  // the size of a block of ours, 0 for anyone else's
  if (((uintptr_t)p & 4095) != 0) return 0;
  pthread_mutex_lock(&lock);
  size_t n = reg_find(p);
  pthread_mutex_unlock(&lock);
  return n;
}

static void *big_alloc(size_t n, int *fresh) {
  n = (n + 4095) & ~(size_t)4095;
  pthread_mutex_lock(&lock);
  if (reg_n >= REG / 4 * 3) {  // declined: the caller asks glibc
    pthread_mutex_unlock(&lock);
    *fresh = -1;
    return 0;
  }
  for (int i = cache_n - 1; i >= 0; i--) {
    if (cache_size[i] == n) {
      void *p = cache_remove(i);
      live += n; bc_reused++;
      reg_put(p, n);
      pthread_mutex_unlock(&lock);
      *fresh = 0;
      return p;
    }
  }
  if (live + n > hwm) hwm = live + n;
  while (cache_n && live + kept + n > hwm) evict_one();
  void *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    pthread_mutex_unlock(&lock);
    *fresh = -1;
    return 0;
  }
  if (huge_pages) madvise(p, n, MADV_HUGEPAGE);
  live += n; bc_fresh++;
  reg_put(p, n);
  pthread_mutex_unlock(&lock);
  *fresh = 1;
  return p;
}

static int big_free(void *p) {
  if (((uintptr_t)p & 4095) != 0) return 0;
  pthread_mutex_lock(&lock);
  size_t n = reg_take(p);
  if (!n) { pthread_mutex_unlock(&lock); return 0; }
  live -= n;
  if (cache_n == CACHE) evict_one();
  cache_ptr[cache_n] = p; cache_size[cache_n] = n; cache_n++; kept += n;
  pthread_mutex_unlock(&lock);
  return 1;
}

void danet_block_cache_trim(void) {
  pthread_mutex_lock(&lock);
  while (cache_n) evict_one();
  pthread_mutex_unlock(&lock);
}

// fresh maps, reuses, unmapped kept blocks, live bytes, kept bytes, high-water mark of live bytes
void danet_block_cache_stats(unsigned long *out) {
  out[0] = bc_fresh; out[1] = bc_reused; out[2] = bc_evicted; out[3] = live; out[4] = kept; out[5] = hwm;
}

void *malloc(size_t n) {
  if (n >= bc_min) {
    int fresh;
    void *p = big_alloc(n, &fresh);
    if (p) return p;
  }
  return __libc_malloc(n);
}

void free(void *p) {
  if (!p) return;
  if (!big_free(p)) __libc_free(p);
}

void *calloc(size_t a, size_t b) {
  size_t n;
  if (__builtin_mul_overflow(a, b, &n)) { errno = ENOMEM; return 0; }
  if (n >= bc_min) {
    int fresh;
    void *p = big_alloc(n, &fresh);
    if (p) {
      if (!fresh) memset(p, 0, n);  // a fresh map is zero already
      return p;
    }
  }
  return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n) {
  if (!p) return malloc(n);
  size_t old = our_size(p);
  if (!old) {
    if (n < bc_min) return __libc_realloc(p, n);
    size_t usable = malloc_usable_size(p);  /* glibc's, p is not ours */
    void *q = malloc(n);
    if (!q) return 0;
    memcpy(q, p, usable < n ? usable : n);
    __libc_free(p);
    return q;
  }
  void *q = malloc(n);
  if (!q) return 0;
  memcpy(q, p, old < n ? old : n);
  free(p);
  return q;
}

// glibc's reallocarray calls its own realloc, which must never see a block of ours.
void *reallocarray(void *p, size_t a, size_t b) {
  size_t n;
  if (__builtin_mul_overflow(a, b, &n)) { errno = ENOMEM; return 0; }
  return realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
  void *p = 0;
  int fresh;
  if (n >= bc_min && align <= 4096) p = big_alloc(n, &fresh);
  if (!p) p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

void *aligned_alloc(size_t align, size_t n) {
  int fresh;
  void *p = (n >= bc_min && align <= 4096) ? big_alloc(n, &fresh) : 0;
  return p ? p : __libc_memalign(align, n);
}

void *memalign(size_t align, size_t n) { return aligned_alloc(align, n); }

#include <dlfcn.h>
size_t malloc_usable_size(void *p) {
  static size_t (*real)(void *);
  if (!real) real = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
  size_t n = p ? our_size(p) : 0;
  if (n) return n;
  return real ? real(p) : 0;
}

static void before_fork(void) { pthread_mutex_lock(&lock); }
static void after_fork(void) { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) static void init(void) {
  const char *s = getenv("DANET_BLOCK_CACHE_MIN_MB");
  if (s && atof(s) > 0) bc_min = (size_t)(atof(s) * 1048576.0);
  const char *tunables = getenv("GLIBC_TUNABLES");  // danet-serve's cpu_allocator_huge_pages sets it
  huge_pages = tunables && strstr(tunables, "glibc.malloc.hugetlb=1") != 0;
  pthread_atfork(before_fork, after_fork, after_fork);
}
