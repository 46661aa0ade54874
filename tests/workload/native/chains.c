/* Workloads whose call stacks are known, for the unwinding tests. Built by the tests with
 * `gcc -O2 -fomit-frame-pointer`, as distributions build C: no frame pointer anywhere.
 *
 *   chains SECONDS   main -> outer_a -> middle_a -> leaf_a for 70 % of the CPU time, and
 *                    main -> outer_b -> middle_b -> leaf_b for 30 %: blocks of 10 slots of the
 *                    same work (not of wall-clock time, so the shares hold under emulation), 7 of
 *                    them a's and 3 b's in an order shuffled anew for each block. A fixed order
 *                    would be periodic, and a sampler at a fixed frequency would see a share that
 *                    depends on how its period falls against the cycle's (65 % or 75 % at 99 Hz).
 *   signal SECONDS   main -> interrupted_work, and every 20 ms a SIGALRM whose handler
 *                    (in_handler) spins for 10 ms on top of it.
 *   deep DEPTH SECONDS  main -> descend x DEPTH -> leaf_a: stacks of a known depth (benchmarks).
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Work until `until`, looking at the clock rarely: samples land in the loop, not in the clock. */
#define SPIN(until, seed)                                                         \
    do {                                                                          \
        double end_ = (until);                                                    \
        uint64_t x = (seed);                                                      \
        while (now() < end_)                                                      \
            for (int i = 0; i < 200000; i++) x = x * 6364136223846793005ULL + 1;  \
        sink ^= x;                                                                \
    } while (0)

/* `units` units of work, about a tenth of a millisecond each on this machine. */
#define WORK(units, seed)                                                              \
    do {                                                                               \
        uint64_t x = (seed);                                                           \
        for (long u = 0; u < (units); u++)                                             \
            for (int i = 0; i < 40000; i++) x = x * 6364136223846793005ULL + 1;        \
        sink ^= x;                                                                     \
    } while (0)

static volatile uint64_t sink;
/* Read at run time, so the compiler cannot specialize the chains for them. */
static volatile long units_per_slot = 1, units_per_descent = 30;

/* Each level keeps a little stack of its own, so that every frame moves the CFA. */
__attribute__((noinline)) static void leaf_a(long units) { volatile char pad[24]; pad[0] = 1; WORK(units, pad[0]); }
__attribute__((noinline)) static void middle_a(long units) { volatile char pad[40]; pad[0] = 2; leaf_a(units); sink += pad[0]; }
__attribute__((noinline)) static void outer_a(long units) { volatile char pad[56]; pad[0] = 3; middle_a(units); sink += pad[0]; }
__attribute__((noinline)) static void leaf_b(long units) { volatile char pad[24]; pad[0] = 4; WORK(units, pad[0]); }
__attribute__((noinline)) static void middle_b(long units) { volatile char pad[40]; pad[0] = 5; leaf_b(units); sink += pad[0]; }
__attribute__((noinline)) static void outer_b(long units) { volatile char pad[56]; pad[0] = 6; middle_b(units); sink += pad[0]; }

__attribute__((noinline)) static void in_handler(int signal) {
    (void)signal;
    SPIN(now() + 0.010, 7);
}

__attribute__((noinline)) static void interrupted_work(double until) { volatile char pad[32]; pad[0] = 8; SPIN(until, pad[0]); }

/* Recursion that keeps a frame of its own at every level (no tail call). */
__attribute__((noinline)) static void descend(int depth, double until) {
    volatile char pad[16];
    pad[0] = (char)depth;
    if (depth > 1) {
        descend(depth - 1, until);
    } else {
        while (now() < until) leaf_a(units_per_descent);
    }
    sink += pad[0];
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "deep") == 0) {
        descend(atoi(argv[2]), now() + atof(argv[3]));
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: %s chains|signal SECONDS, or deep DEPTH SECONDS\n", argv[0]);
        return 2;
    }
    double end = now() + atof(argv[2]);
    if (strcmp(argv[1], "chains") == 0) {
        char slots[10] = {'a', 'a', 'a', 'a', 'a', 'a', 'a', 'b', 'b', 'b'};
        uint64_t random = 0x9e3779b97f4a7c15ULL;
        while (now() < end) {
            for (int i = 9; i > 0; i--) { /* Fisher-Yates */
                random = random * 6364136223846793005ULL + 1442695040888963407ULL;
                int j = (int)((random >> 33) % (uint64_t)(i + 1));
                char slot = slots[i];
                slots[i] = slots[j];
                slots[j] = slot;
            }
            for (int i = 0; i < 10; i++) {
                if (slots[i] == 'a')
                    outer_a(units_per_slot);
                else
                    outer_b(units_per_slot);
            }
        }
    } else if (strcmp(argv[1], "signal") == 0) {
        struct sigaction action = {0};
        action.sa_handler = in_handler;
        sigaction(SIGALRM, &action, NULL);
        struct itimerval every = {{0, 20000}, {0, 20000}};
        setitimer(ITIMER_REAL, &every, NULL);
        interrupted_work(end);
    } else {
        return 2;
    }
    return 0;
}
