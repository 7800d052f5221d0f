/* Block scanning for the compiled framer (src/_framer.pyx, Framer._inside).
 *
 * Inside a frame, most bytes are string contents, whitespace, short keys and
 * the structural bytes between them.  qc_blocks() takes 64 bytes at a time:
 * it classifies them into bitmasks (AVX2 when the CPU has it, else SSE2, the
 * x86-64 baseline; other CPUs keep the byte loops: the portable variant,
 * one table lookup per byte, is slower than they are and serves to test
 * the mask logic everywhere), finds the bytes
 * inside strings with a prefix XOR of the quote mask, and counts tokens and
 * depth with popcounts.  It accepts a block only when the byte loop of
 * _inside() would cross it without stopping: no backslash, no single quote,
 * no control byte in a string, no 0xFE/0xFF, no number but plain integers
 * of fewer than long_int digits, no closer that may end the frame, no limit
 * within reach.  At the first block it does not accept it returns the start
 * of the token in progress (a token boundary) with the counters as they
 * were there, so the byte loop resumes exactly where it would have been;
 * *stop tells the caller where that block ends, so it does not try blocks
 * again before the byte loop has crossed it (linear time).
 *
 * The block loop is written once (the QC_TEMPLATE part at the end) and
 * compiled once per instruction set by including this file again.
 */
#ifndef QC_TEMPLATE
#ifndef QMPCORE_SCAN_H
#define QMPCORE_SCAN_H

#include <stdint.h>
#include <Python.h>

#if defined(__x86_64__) || defined(_M_X64)
#define QC_SSE2 1
#include <emmintrin.h>
#if defined(__GNUC__) || defined(__clang__)
#define QC_AVX2 1
#include <immintrin.h>
#endif
#endif

#if defined(__GNUC__) || defined(__clang__)
#define QC_INLINE static inline __attribute__((always_inline))
#define QC_CTZ(x) __builtin_ctzll(x)
#define QC_CLZ(x) __builtin_clzll(x)
#else
#define QC_INLINE static __forceinline
static int qc_ctz(uint64_t x) {
    int n = 0;
    while (!(x & 1)) { x >>= 1; n++; }
    return n;
}
static int qc_clz(uint64_t x) {
    int n = 0;
    while (!(x & 0x8000000000000000ULL)) { x <<= 1; n++; }
    return n;
}
#define QC_CTZ(x) qc_ctz(x)
#define QC_CLZ(x) qc_clz(x)
#endif

/* Population count without a library call (the popcnt instruction is not in
 * the x86-64 baseline; the AVX2 variant gets it from its target). */
QC_INLINE int qc_popcnt_swar(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
}

/* One 64-byte block as bitmasks (bit i: byte i). */
typedef struct {
    uint64_t quote;    /* " */
    uint64_t hard;     /* \, 0xFE, 0xFF, control bytes but \t \r \n: refused anywhere */
    uint64_t wsc;      /* \t \r \n: refused in strings */
    uint64_t allowed;  /* what may stand outside strings: whitespace, {}[]:, " a-z 0-9 */
    uint64_t open;     /* { [ */
    uint64_t close;    /* } ] */
    uint64_t brace;    /* bytes with bit 0x20 set (tells { } from [ ]) */
    uint64_t structural;  /* { } [ ] : , */
    uint64_t lower;    /* a-z */
    uint64_t digit;    /* 0-9 */
} qc_masks;

/* The scan's state between blocks. */
typedef struct {
    Py_ssize_t br, bk, nt;        /* braces, brackets, tokens begun */
    Py_ssize_t at, at_br, at_bk, at_nt;  /* the last token boundary, counters there */
    Py_ssize_t stop;              /* the end of the block that stopped the scan */
} qc_state;

#ifdef QC_SSE2
QC_INLINE uint64_t qc_mm4(__m128i a, __m128i b, __m128i c, __m128i d) {
    return (uint64_t)(uint16_t)_mm_movemask_epi8(a) | ((uint64_t)(uint16_t)_mm_movemask_epi8(b) << 16) |
           ((uint64_t)(uint16_t)_mm_movemask_epi8(c) << 32) | ((uint64_t)(uint16_t)_mm_movemask_epi8(d) << 48);
}

QC_INLINE void qc_classify_sse2(const unsigned char *p, qc_masks *m) {
    __m128i q[4], hard[4], wsc[4], allowed[4], open[4], close[4], brace[4], st[4], lower[4], digit[4];
    int k;
    for (k = 0; k < 4; k++) {
        const __m128i x = _mm_loadu_si128((const __m128i *)(p + 16 * k));
        const __m128i c1f = _mm_set1_epi8(0x1F);
        __m128i ctl = _mm_cmpeq_epi8(_mm_max_epu8(x, c1f), c1f);  /* x <= 0x1F */
        __m128i t = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('\t')),
                                              _mm_cmpeq_epi8(x, _mm_set1_epi8('\r'))),
                                 _mm_cmpeq_epi8(x, _mm_set1_epi8('\n')));
        __m128i x20 = _mm_or_si128(x, _mm_set1_epi8(0x20));
        __m128i o = _mm_cmpeq_epi8(x20, _mm_set1_epi8('{'));
        __m128i c = _mm_cmpeq_epi8(x20, _mm_set1_epi8('}'));
        __m128i s = _mm_or_si128(_mm_or_si128(o, c), _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(':')),
                                                                  _mm_cmpeq_epi8(x, _mm_set1_epi8(','))));
        __m128i lo = _mm_cmplt_epi8(_mm_add_epi8(x, _mm_set1_epi8((char)(0x80 - 'a'))), _mm_set1_epi8((char)(-128 + 26)));
        __m128i di = _mm_cmplt_epi8(_mm_add_epi8(x, _mm_set1_epi8((char)(0x80 - '0'))), _mm_set1_epi8((char)(-128 + 10)));
        __m128i qu = _mm_cmpeq_epi8(x, _mm_set1_epi8('"'));
        q[k] = qu;
        wsc[k] = t;
        hard[k] = _mm_or_si128(_mm_or_si128(_mm_andnot_si128(t, ctl),
                                            _mm_cmpeq_epi8(_mm_max_epu8(x, _mm_set1_epi8((char)0xFE)), x)),
                               _mm_cmpeq_epi8(x, _mm_set1_epi8('\\')));
        allowed[k] = _mm_or_si128(_mm_or_si128(_mm_or_si128(t, _mm_cmpeq_epi8(x, _mm_set1_epi8(' '))), s),
                                  _mm_or_si128(_mm_or_si128(lo, di), qu));
        open[k] = o;
        close[k] = c;
        brace[k] = _mm_slli_epi16(x, 2);  /* bit 0x20 to the top */
        st[k] = s;
        lower[k] = lo;
        digit[k] = di;
    }
    m->quote = qc_mm4(q[0], q[1], q[2], q[3]);
    m->hard = qc_mm4(hard[0], hard[1], hard[2], hard[3]);
    m->wsc = qc_mm4(wsc[0], wsc[1], wsc[2], wsc[3]);
    m->allowed = qc_mm4(allowed[0], allowed[1], allowed[2], allowed[3]);
    m->open = qc_mm4(open[0], open[1], open[2], open[3]);
    m->close = qc_mm4(close[0], close[1], close[2], close[3]);
    m->brace = qc_mm4(brace[0], brace[1], brace[2], brace[3]);
    m->structural = qc_mm4(st[0], st[1], st[2], st[3]);
    m->lower = qc_mm4(lower[0], lower[1], lower[2], lower[3]);
    m->digit = qc_mm4(digit[0], digit[1], digit[2], digit[3]);
}
#define QC_POPCNT_SSE2(x) qc_popcnt_swar(x)
#endif

#ifdef QC_AVX2
#define QC_AVX2_TARGET __attribute__((target("avx2,popcnt")))
QC_AVX2_TARGET static inline uint64_t qc_mm2(__m256i a, __m256i b) {
    return (uint64_t)(uint32_t)_mm256_movemask_epi8(a) | ((uint64_t)(uint32_t)_mm256_movemask_epi8(b) << 32);
}

QC_AVX2_TARGET static inline void qc_classify_avx2(const unsigned char *p, qc_masks *m) {
    __m256i q[2], hard[2], wsc[2], allowed[2], open[2], close[2], brace[2], st[2], lower[2], digit[2];
    int k;
    for (k = 0; k < 2; k++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(p + 32 * k));
        const __m256i c1f = _mm256_set1_epi8(0x1F);
        __m256i ctl = _mm256_cmpeq_epi8(_mm256_max_epu8(x, c1f), c1f);
        __m256i t = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8('\t')),
                                                    _mm256_cmpeq_epi8(x, _mm256_set1_epi8('\r'))),
                                    _mm256_cmpeq_epi8(x, _mm256_set1_epi8('\n')));
        __m256i x20 = _mm256_or_si256(x, _mm256_set1_epi8(0x20));
        __m256i o = _mm256_cmpeq_epi8(x20, _mm256_set1_epi8('{'));
        __m256i c = _mm256_cmpeq_epi8(x20, _mm256_set1_epi8('}'));
        __m256i s = _mm256_or_si256(_mm256_or_si256(o, c),
                                    _mm256_or_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(':')),
                                                    _mm256_cmpeq_epi8(x, _mm256_set1_epi8(','))));
        __m256i lo = _mm256_cmpgt_epi8(_mm256_set1_epi8((char)(-128 + 26)),
                                       _mm256_add_epi8(x, _mm256_set1_epi8((char)(0x80 - 'a'))));
        __m256i di = _mm256_cmpgt_epi8(_mm256_set1_epi8((char)(-128 + 10)),
                                       _mm256_add_epi8(x, _mm256_set1_epi8((char)(0x80 - '0'))));
        __m256i qu = _mm256_cmpeq_epi8(x, _mm256_set1_epi8('"'));
        q[k] = qu;
        wsc[k] = t;
        hard[k] = _mm256_or_si256(_mm256_or_si256(_mm256_andnot_si256(t, ctl),
                                                  _mm256_cmpeq_epi8(_mm256_max_epu8(x, _mm256_set1_epi8((char)0xFE)), x)),
                                  _mm256_cmpeq_epi8(x, _mm256_set1_epi8('\\')));
        allowed[k] = _mm256_or_si256(
            _mm256_or_si256(_mm256_or_si256(t, _mm256_cmpeq_epi8(x, _mm256_set1_epi8(' '))), s),
            _mm256_or_si256(_mm256_or_si256(lo, di), qu));
        open[k] = o;
        close[k] = c;
        brace[k] = _mm256_slli_epi16(x, 2);
        st[k] = s;
        lower[k] = lo;
        digit[k] = di;
    }
    m->quote = qc_mm2(q[0], q[1]);
    m->hard = qc_mm2(hard[0], hard[1]);
    m->wsc = qc_mm2(wsc[0], wsc[1]);
    m->allowed = qc_mm2(allowed[0], allowed[1]);
    m->open = qc_mm2(open[0], open[1]);
    m->close = qc_mm2(close[0], close[1]);
    m->brace = qc_mm2(brace[0], brace[1]);
    m->structural = qc_mm2(st[0], st[1]);
    m->lower = qc_mm2(lower[0], lower[1]);
    m->digit = qc_mm2(digit[0], digit[1]);
}
#define QC_POPCNT_AVX2(x) __builtin_popcountll(x)
#endif

/* Portable classification: one table lookup per byte (CPUs without SSE2). */
enum { QK_OTHER, QK_QUOTE, QK_HARD, QK_WSC, QK_SP, QK_OPEN_BRACE, QK_OPEN_BRACK, QK_CLOSE_BRACE,
       QK_CLOSE_BRACK, QK_SEP, QK_LOWER, QK_DIGIT, QK_N };
static unsigned char qc_kind[256];

static void qc_init_kinds(void) {
    int c;
    for (c = 0; c < 256; c++) {
        unsigned char k = QK_OTHER;
        if (c == '"') k = QK_QUOTE;
        else if (c == '\\' || c >= 0xFE) k = QK_HARD;
        else if (c == '\t' || c == '\r' || c == '\n') k = QK_WSC;
        else if (c < 0x20) k = QK_HARD;
        else if (c == ' ') k = QK_SP;
        else if (c == '{') k = QK_OPEN_BRACE;
        else if (c == '[') k = QK_OPEN_BRACK;
        else if (c == '}') k = QK_CLOSE_BRACE;
        else if (c == ']') k = QK_CLOSE_BRACK;
        else if (c == ':' || c == ',') k = QK_SEP;
        else if (c >= 'a' && c <= 'z') k = QK_LOWER;
        else if (c >= '0' && c <= '9') k = QK_DIGIT;
        qc_kind[c] = k;
    }
}

QC_INLINE void qc_classify_portable(const unsigned char *p, qc_masks *m) {
    uint64_t k[QK_N] = {0};
    int i;
    for (i = 0; i < 64; i++) k[qc_kind[p[i]]] |= (uint64_t)1 << i;
    m->quote = k[QK_QUOTE];
    m->hard = k[QK_HARD];
    m->wsc = k[QK_WSC];
    m->open = k[QK_OPEN_BRACE] | k[QK_OPEN_BRACK];
    m->close = k[QK_CLOSE_BRACE] | k[QK_CLOSE_BRACK];
    m->brace = k[QK_OPEN_BRACE] | k[QK_CLOSE_BRACE];
    m->structural = m->open | m->close | k[QK_SEP];
    m->lower = k[QK_LOWER];
    m->digit = k[QK_DIGIT];
    m->allowed = k[QK_WSC] | k[QK_SP] | m->structural | m->lower | m->digit | m->quote;
}
#define QC_POPCNT_PORTABLE(x) qc_popcnt_swar(x)

/* Bit i: the XOR of bits 0..i (from an opening quote up to its closing one). */
QC_INLINE uint64_t qc_prefix_xor(uint64_t x) {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

/* Positions i where bits i..i+k-1 are all set (1 <= k <= 64). */
QC_INLINE uint64_t qc_runs(uint64_t x, Py_ssize_t k) {
    Py_ssize_t have = 1;
    while (x && have * 2 <= k) {
        x &= x >> have;
        have *= 2;
    }
    if (have < k) x &= x >> (k - have);
    return x;
}

/* Which of the bytes ``among`` (a mask over p[0:64]) are ``c`` (asked only
 * about digits and keywords outside strings: a few bytes). */
QC_INLINE uint64_t qc_bytes_eq(const unsigned char *p, uint64_t among, unsigned char c) {
    uint64_t out = 0;
    while (among) {
        int i = QC_CTZ(among);
        if (p[i] == c) out |= (uint64_t)1 << i;
        among &= among - 1;
    }
    return out;
}

#define QC_TEMPLATE 1
#ifdef QC_AVX2
#define QC_NAME qc_blocks_avx2
#define QC_PLAIN_NAME qc_plain_avx2
#define QC_CLASSIFY qc_classify_avx2
#define QC_POPCNT QC_POPCNT_AVX2
#define QC_TARGET QC_AVX2_TARGET
#include "_scan.h"
#undef QC_NAME
#undef QC_PLAIN_NAME
#undef QC_CLASSIFY
#undef QC_POPCNT
#undef QC_TARGET
#endif
#ifdef QC_SSE2
#define QC_NAME qc_blocks_sse2
#define QC_PLAIN_NAME qc_plain_sse2
#define QC_CLASSIFY qc_classify_sse2
#define QC_POPCNT QC_POPCNT_SSE2
#define QC_TARGET
#include "_scan.h"
#undef QC_NAME
#undef QC_PLAIN_NAME
#undef QC_CLASSIFY
#undef QC_POPCNT
#undef QC_TARGET
#endif
#define QC_NAME qc_blocks_portable
#define QC_PLAIN_NAME qc_plain_portable
#define QC_CLASSIFY qc_classify_portable
#define QC_POPCNT QC_POPCNT_PORTABLE
#define QC_TARGET
#include "_scan.h"
#undef QC_NAME
#undef QC_PLAIN_NAME
#undef QC_CLASSIFY
#undef QC_POPCNT
#undef QC_TARGET
#undef QC_TEMPLATE

typedef void (*qc_blocks_fn)(const unsigned char *, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                             Py_ssize_t, qc_state *);
typedef Py_ssize_t (*qc_plain_fn)(const unsigned char *, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                  Py_ssize_t *, Py_ssize_t *);
static qc_blocks_fn qc_impl = NULL;
static qc_plain_fn qc_plain_impl = NULL;
static const char *qc_impl_name = "none";

/* Choose the variant: the best this CPU has, or ``want`` if it has it
 * ("none": the byte loops alone; "portable" is slower than they are and is
 * only chosen when asked for, so that tests check its masks everywhere). */
static void qc_choose(const char *want) {
    int asked = want && want[0];
    qc_init_kinds();
    qc_impl = NULL;
    qc_plain_impl = NULL;
    qc_impl_name = "none";
    if (asked && strcmp(want, "none") == 0) return;
    if (asked && strcmp(want, "portable") == 0) {
        qc_impl = qc_blocks_portable;
        qc_plain_impl = qc_plain_portable;
        qc_impl_name = "portable";
        return;
    }
#ifdef QC_SSE2
    qc_impl = qc_blocks_sse2;
    qc_plain_impl = qc_plain_sse2;
    qc_impl_name = "sse2";
    if (asked && strcmp(want, "sse2") == 0) return;
#endif
#ifdef QC_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) {
        qc_impl = qc_blocks_avx2;
        qc_plain_impl = qc_plain_avx2;
        qc_impl_name = "avx2";
    }
#endif
}

/* Scan p[pos:n] from a token boundary inside a frame, 64 bytes at a time.
 * brace, bracket, ntok: the byte loop's counters (updated); last: the first
 * position no token may reach (frame size limit); long_int: digits that make
 * an integer need the exact decoder.  Returns the token boundary where the
 * byte loop resumes; *stop: the end of the block that stopped the scan. */
static inline Py_ssize_t qc_blocks(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t last,
                                   Py_ssize_t max_depth, Py_ssize_t max_tokens, Py_ssize_t long_int,
                                   Py_ssize_t *brace, Py_ssize_t *bracket, Py_ssize_t *ntok, Py_ssize_t *stop) {
    qc_state s;
    Py_ssize_t end = n < last ? n : last;  /* no block reaches the frame size limit */
    s.br = s.at_br = *brace;
    s.bk = s.at_bk = *bracket;
    s.nt = s.at_nt = *ntok;
    s.at = pos;
    s.stop = pos + 64;
    if (qc_impl == NULL) {
        *stop = n + 64;  /* not in this buffer */
        return pos;
    }
    if (max_tokens - s.nt > 64) {  /* (near the token limit the byte loop counts) */
        qc_impl(p, pos, end, max_depth, max_tokens, long_int, &s);
    }
    *brace = s.at_br;
    *bracket = s.at_bk;
    *ntok = s.at_nt;
    *stop = s.stop;
    return s.at;
}

/* For Framer._plain(): p[pos:n] is valid JSON and pos a token boundary
 * outside strings, not inside a number.  Returns -1 when plain_line()
 * surely fails (nesting deeper than max_depth, 0e or 0E starting a
 * number), else the token boundary
 * where the byte loop resumes, *depth the nesting there and *stop the end
 * of the block that stopped the scan (a backslash: escapes are the byte
 * loop's). */
static inline Py_ssize_t qc_plain(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t max_depth,
                                  Py_ssize_t long_int, Py_ssize_t *depth, Py_ssize_t *stop) {
    if (qc_plain_impl == NULL) {
        *stop = n + 64;
        return pos;
    }
    return qc_plain_impl(p, pos, n, max_depth, long_int, depth, stop);
}

#endif /* QMPCORE_SCAN_H */

#else /* QC_TEMPLATE: the block loop, once per instruction set */

QC_TARGET static void QC_NAME(const unsigned char *p, Py_ssize_t b, Py_ssize_t end, Py_ssize_t max_depth,
                              Py_ssize_t max_tokens, Py_ssize_t long_int, qc_state *s) {
    Py_ssize_t br = s->br, bk = s->bk, nt = s->nt, drun = 0;
    uint64_t in_str = 0, prev_lower = 0, prev_digit = 0;
    qc_masks m;
    while (b + 64 <= end && nt + 64 < max_tokens) {
        uint64_t instr, outside, lo, di, ls, ds, starts, opens, closes, ob, cb, ok, ck, bad, keep;
        Py_ssize_t nob, ncb, nok, nck;
        int cut, last, pending_str, pending_lo, pending_di;
        QC_CLASSIFY(p + b, &m);
        instr = qc_prefix_xor(m.quote) ^ in_str;  /* opening quotes and string contents */
        outside = ~instr & ~m.quote;
        /* bytes the byte loop stops at: a backslash (escapes), 0xFE/0xFF and
         * control bytes anywhere, \t \r \n in strings, outside strings
         * anything but whitespace, structural bytes, quotes, a-z and 0-9 */
        bad = m.hard | (instr & m.wsc) | (outside & ~m.allowed);
        lo = m.lower & outside;
        di = m.digit & outside;
        ls = lo & ~((lo << 1) | prev_lower);
        ds = 0;
        if (di | drun) {
            uint64_t after = (di << 1) | prev_digit;
            ds = di & ~after;
            if (ds) bad |= qc_bytes_eq(p + b, ds, '0');  /* a number starting with 0 */
            if (lo & after) bad |= qc_bytes_eq(p + b, lo & after, 'e');  /* a float */
            if (drun && drun + (~di ? (Py_ssize_t)QC_CTZ(~di) : 64) >= long_int) bad |= 1;
            bad |= qc_runs(di, long_int);  /* an integer orjson may round */
        }
        cut = bad ? QC_CTZ(bad) : 64;  /* the block is taken up to here */
        keep = cut == 64 ? ~(uint64_t)0 : ((uint64_t)1 << cut) - 1;
        opens = m.open & outside & keep;
        closes = m.close & outside & keep;
        ob = opens & m.brace;
        ok = opens & ~m.brace;
        cb = closes & m.brace;
        ck = closes & ~m.brace;
        nob = QC_POPCNT(ob);
        nok = QC_POPCNT(ok);
        ncb = QC_POPCNT(cb);
        nck = QC_POPCNT(ck);
        if (br + bk + nob + nok > max_depth) break;  /* (the byte loop checks each) */
        if (closes && !((ncb == 0 || br - ncb >= 1) && (nck == 0 || bk - nck >= 1))) {
            /* each closer: would the byte loop stop there (the frame may end)? */
            uint64_t c = closes;
            while (c) {
                int i = QC_CTZ(c);
                uint64_t below = ((uint64_t)1 << i) - 1;
                Py_ssize_t x = br + QC_POPCNT(ob & below) - QC_POPCNT(cb & below);
                Py_ssize_t y = bk + QC_POPCNT(ok & below) - QC_POPCNT(ck & below);
                if ((cb >> i) & 1 ? (x <= 1 && (x <= 0 || y <= 0)) : (y <= 1 && (y <= 0 || x <= 0))) {
                    cut = i;  /* up to this closer */
                    keep = below;
                    ob &= below;
                    ok &= below;
                    cb &= below;
                    ck &= below;
                    nob = QC_POPCNT(ob);
                    nok = QC_POPCNT(ok);
                    ncb = QC_POPCNT(cb);
                    nck = QC_POPCNT(ck);
                    break;
                }
                c &= c - 1;
            }
        }
        starts = ((m.structural & outside) | (m.quote & instr) | ls | ds) & keep;
        /* Taken up to cut: where does the token in progress there start? */
        last = cut - 1;
        if (last >= 0) {
            pending_str = (int)((instr >> last) & 1);
            pending_lo = (int)((lo >> last) & 1);
            pending_di = (int)((di >> last) & 1);
        } else {
            pending_str = in_str != 0;
            pending_lo = (int)prev_lower;
            pending_di = (int)prev_digit;
        }
        if (pending_str | pending_lo | pending_di) {
            uint64_t first = (pending_str ? (m.quote & instr) : pending_lo ? ls : ds) & keep;
            if (first) {  /* in this block (else it began before, where s->at already is) */
                int from = 63 - QC_CLZ(first);
                uint64_t below = ((uint64_t)1 << from) - 1;
                s->at = b + from;
                s->at_br = br + QC_POPCNT(ob & below) - QC_POPCNT(cb & below);
                s->at_bk = bk + QC_POPCNT(ok & below) - QC_POPCNT(ck & below);
                s->at_nt = nt + QC_POPCNT(starts & below);
            }
        }
        br += nob - ncb;
        bk += nok - nck;
        nt += QC_POPCNT(starts);
        if (!(pending_str | pending_lo | pending_di)) {
            s->at = b + cut;
            s->at_br = br;
            s->at_bk = bk;
            s->at_nt = nt;
        }
        if (cut < 64) break;
        b += 64;
        in_str = pending_str ? ~(uint64_t)0 : 0;
        prev_lower = (uint64_t)pending_lo;
        prev_digit = (uint64_t)pending_di;
        drun = pending_di ? (~di ? (Py_ssize_t)QC_CLZ(~di) : drun + 64) : 0;
    }
    s->stop = b + 64;
}

QC_TARGET static Py_ssize_t QC_PLAIN_NAME(const unsigned char *p, Py_ssize_t b, Py_ssize_t n, Py_ssize_t max_depth,
                                          Py_ssize_t long_int, Py_ssize_t *depth, Py_ssize_t *stop) {
    Py_ssize_t d = *depth, at = b, at_d = d, drun = 0;
    uint64_t in_str = 0, prev_digit = 0;
    qc_masks m;
    while (b + 64 <= n) {
        uint64_t instr, outside, di, ds = 0, opens, closes, keep;
        Py_ssize_t nopen;
        int cut, last, pending_str, pending_di;
        QC_CLASSIFY(p + b, &m);
        cut = m.hard ? QC_CTZ(m.hard) : 64;  /* (in valid JSON: a backslash) */
        keep = cut == 64 ? ~(uint64_t)0 : ((uint64_t)1 << cut) - 1;
        instr = qc_prefix_xor(m.quote) ^ in_str;
        outside = ~instr & ~m.quote;
        di = m.digit & outside & keep;
        if (di | drun) {
            uint64_t z;
            ds = di & ~((di << 1) | prev_digit);
            if ((drun && drun + (~di ? (Py_ssize_t)QC_CTZ(~di) : 64) >= long_int) || qc_runs(di, long_int)) {
                /* a long integer: the byte loop decides (orjson keeps
                 * [-2**63, 2**64) exact), from the last token boundary */
                *stop = b + 64;
                *depth = at_d;
                return at;
            }
            z = ds ? qc_bytes_eq(p + b, ds, '0') : 0;
            while (z) {  /* 0e5 is 0 then e5 to QEMU's lexer */
                Py_ssize_t i = b + QC_CTZ(z) + 1;
                if (i < n && (p[i] | 0x20) == 'e') return -1;
                z &= z - 1;
            }
        }
        opens = m.open & outside & keep;
        closes = m.close & outside & keep;
        nopen = QC_POPCNT(opens);
        if (d + nopen > max_depth) {
            uint64_t o = opens;
            while (o) {
                int i = QC_CTZ(o);
                uint64_t below = ((uint64_t)1 << i) - 1;
                if (d + QC_POPCNT(opens & below) - QC_POPCNT(closes & below) + 1 > max_depth) return -1;
                o &= o - 1;
            }
        }
        last = cut - 1;
        if (last >= 0) {
            pending_str = (int)((instr >> last) & 1);
            pending_di = (int)((di >> last) & 1);
        } else {
            pending_str = in_str != 0;
            pending_di = (int)prev_digit;
        }
        if (pending_str | pending_di) {
            uint64_t first = (pending_str ? (m.quote & instr) : ds) & keep;
            if (first) {
                int from = 63 - QC_CLZ(first);
                uint64_t below = ((uint64_t)1 << from) - 1;
                at = b + from;
                at_d = d + QC_POPCNT(opens & below) - QC_POPCNT(closes & below);
            }
        }
        d += nopen - QC_POPCNT(closes);
        if (!(pending_str | pending_di)) {
            at = b + cut;
            at_d = d;
        }
        if (cut < 64) break;
        b += 64;
        in_str = pending_str ? ~(uint64_t)0 : 0;
        prev_digit = (uint64_t)pending_di;
        drun = pending_di ? (~di ? (Py_ssize_t)QC_CLZ(~di) : drun + 64) : 0;
    }
    *stop = b + 64;
    *depth = at_d;
    return at;
}

#endif /* QC_TEMPLATE */
