/* Workloads whose off-CPU time is known, for the off-CPU tests. Built by the tests with
 * `gcc -O2 -fomit-frame-pointer -pthread`. Each mode waits for a line on stdin before it starts
 * (so that a recorder can attach first), runs for SECONDS, and prints, per thread, its name, tid,
 * how long it ran, how long it spent in the named function that blocks, and its CPU time:
 *
 *   threads SECONDS [SLEEPERS]
 *                    "sleeper": computes 1 ms, then sleeps 3 ms in sleep_three_milliseconds (75 %);
 *                    "reader": blocks on a pipe read in wait_for_pipe (all of its time);
 *                    "writer": sleeps 10 ms in pause_between_writes, then writes to that pipe.
 *                    With SLEEPERS, that many sleeper threads (1 by default).
 *   sync FILE SECONDS  "syncer": writes 4 KiB to FILE and fsyncs it in sync_to_disk, over and
 *                    over: uninterruptible sleep (D), waiting for the disk.
 *   spin SECONDS     two "spinner" threads that never block, on one CPU: each is preempted about
 *                    half of the time, and none of it is off-CPU time.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double end_at;
static int pipe_fds[2];
static const char *sync_path;
static volatile uint64_t sink;

/* What each thread reports at its end. */
struct report {
    const char *name;
    long tid;
    double started, blocked;
};

static void begin(struct report *r, const char *name) {
    r->name = name;
    r->tid = syscall(SYS_gettid);
    r->started = now();
    r->blocked = 0;
    pthread_setname_np(pthread_self(), name);
}

static void print_report(const struct report *r) {
    struct timespec cpu;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
    printf("%s %ld ran %.6f blocked %.6f cpu %.6f\n", r->name, r->tid, now() - r->started, r->blocked,
           cpu.tv_sec + cpu.tv_nsec / 1e9);
}

__attribute__((noinline)) static void compute_a_millisecond(void) {
    double until = now() + 0.001;
    uint64_t x = 1;
    while (now() < until)
        for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ULL + 1;
    sink ^= x;
}

__attribute__((noinline)) static void sleep_three_milliseconds(struct report *r) {
    struct timespec three = {0, 3000000};
    double start = now();
    nanosleep(&three, NULL);
    r->blocked += now() - start;
}

__attribute__((noinline)) static int wait_for_pipe(struct report *r) {
    char byte;
    double start = now();
    ssize_t n = read(pipe_fds[0], &byte, 1);
    r->blocked += now() - start;
    return n == 1;
}

__attribute__((noinline)) static void pause_between_writes(struct report *r) {
    struct timespec ten = {0, 10000000};
    double start = now();
    nanosleep(&ten, NULL);
    r->blocked += now() - start;
}

__attribute__((noinline)) static void sync_to_disk(struct report *r, int fd) {
    static char block[4096];
    double start = now();
    if (pwrite(fd, block, sizeof block, 0) != sizeof block || fsync(fd) != 0) {
        perror("sync");
        exit(1);
    }
    r->blocked += now() - start;
}

static void *sleeper(void *arg) {
    struct report r;
    (void)arg;
    begin(&r, "sleeper");
    while (now() < end_at) {
        compute_a_millisecond();
        sleep_three_milliseconds(&r);
    }
    print_report(&r);
    return NULL;
}

static void *reader(void *arg) {
    struct report r;
    (void)arg;
    begin(&r, "reader");
    while (wait_for_pipe(&r)) {
    }
    print_report(&r);
    return NULL;
}

static void *writer(void *arg) {
    struct report r;
    (void)arg;
    begin(&r, "writer");
    while (now() < end_at) {
        pause_between_writes(&r);
        if (write(pipe_fds[1], "x", 1) != 1) exit(1);
    }
    close(pipe_fds[1]);
    print_report(&r);
    return NULL;
}

static void *syncer(void *arg) {
    struct report r;
    (void)arg;
    begin(&r, "syncer");
    int fd = open(sync_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(sync_path);
        exit(1);
    }
    while (now() < end_at) sync_to_disk(&r, fd);
    close(fd);
    print_report(&r);
    return NULL;
}

static void *spinner(void *arg) {
    struct report r;
    cpu_set_t one;
    (void)arg;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    sched_setaffinity(0, sizeof one, &one);
    begin(&r, "spinner");
    uint64_t x = 1;
    while (now() < end_at)
        for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ULL + 1;
    sink ^= x;
    print_report(&r);
    return NULL;
}

static void run(void *(*threads[])(void *), int count) {
    pthread_t ids[16];
    for (int i = 0; i < count; i++) pthread_create(&ids[i], NULL, threads[i], NULL);
    for (int i = 0; i < count; i++) pthread_join(ids[i], NULL);
}

int main(int argc, char **argv) {
    char line[16];
    if (argc < 3) {
        fprintf(stderr, "usage: %s threads SECONDS [SLEEPERS], spin SECONDS, or sync FILE SECONDS\n", argv[0]);
        return 2;
    }
    if (!fgets(line, sizeof line, stdin)) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "threads") == 0) {
        end_at = now() + atof(argv[2]);
        if (pipe(pipe_fds) != 0) return 1;
        int sleepers = argc > 3 ? atoi(argv[3]) : 1;
        if (sleepers < 1 || sleepers > 8) return 2;
        void *(*threads[10])(void *) = {reader, writer};
        for (int i = 0; i < sleepers; i++) threads[2 + i] = sleeper;
        run(threads, 2 + sleepers);
    } else if (strcmp(argv[1], "spin") == 0) {
        end_at = now() + atof(argv[2]);
        void *(*threads[])(void *) = {spinner, spinner};
        run(threads, 2);
    } else if (strcmp(argv[1], "sync") == 0 && argc == 4) {
        sync_path = argv[2];
        end_at = now() + atof(argv[3]);
        void *(*threads[])(void *) = {syncer};
        run(threads, 1);
    } else {
        return 2;
    }
    return 0;
}
