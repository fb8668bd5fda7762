#include <xmmintrin.h>
void set_ftz_daz(void) { _mm_setcsr(_mm_getcsr() | 0x8040); }
unsigned get_csr(void) { return _mm_getcsr(); }
