/* Test program for the exactness test: inlining, clones, loops (discriminators),
 * asm labels and static functions, compiled with gcc -g -O2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline uint8_t inb(uint16_t port) { return (uint8_t)(port * 3u + 1u); }
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("" : : "r"(port), "r"(v) : "memory"); }

static inline int ide_wait(uint16_t base)
{
	int spins = 0;
	while (inb(base + 7) & 0x80 && spins < 1000)
		spins++;
	return spins;
}

static inline void ide_select(uint16_t base, uint32_t lba)
{
	outb(base + 6, 0xe0 | ((lba >> 24) & 0x0f));
	outb(base + 2, 1);
	outb(base + 3, lba & 0xff);
	outb(base + 4, (lba >> 8) & 0xff);
	outb(base + 5, (lba >> 16) & 0xff);
}

__attribute__((noinline)) int ide_do_rw_disk(uint16_t base, uint32_t lba, int write)
{
	int r = ide_wait(base);
	ide_select(base, lba);
	outb(base + 7, write ? 0x30 : 0x20);
	for (int i = 0; i < 256; i++)
		r += ide_wait(base) + (i & 3);
	return r;
}

static __attribute__((noinline)) long scale(long v, long k)
{
	if (k == 0)
		return v;
	return v * k / (k + 1);
}

static long ticks;

__attribute__((noinline)) void timer_interrupt(int hz)
{
	for (int i = 0; i < hz; i++) {
		ticks += scale(i, 7);
		if (ticks & 1)
			outb(0x20, 0x20);
	}
}

static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

__attribute__((noinline)) int verify_pmtmr_rate(int *v, int n)
{
	qsort(v, n, sizeof *v, cmp);
	return v[n / 2] + (int)scale(n, 0);
}

int cxx_entry(int);

int main(int argc, char **argv)
{
	int v[4] = { argc, 3, 1, 2 };
	timer_interrupt(argc * 10);
	printf("%d %d %d %ld\n", ide_do_rw_disk(0x1f0, argc, argc > 1),
	       verify_pmtmr_rate(v, 4), cxx_entry(argc), ticks);
	(void)argv;
	return 0;
}
