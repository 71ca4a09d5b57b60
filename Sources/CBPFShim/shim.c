#include "CBPFShim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Per-thread capture: parallel loads on different threads never mix logs. */
static __thread char *capture_buffer;
static __thread size_t capture_length;
static __thread size_t capture_capacity;
static __thread bool capture_active;

static int cbpf_print(enum libbpf_print_level level, const char *format, va_list args) {
    (void)level;
    if (!capture_active) return 0;
    va_list measure;
    va_copy(measure, args);
    int needed = vsnprintf(NULL, 0, format, measure);
    va_end(measure);
    if (needed <= 0) return 0;
    size_t required = capture_length + (size_t)needed + 1;
    if (required > capture_capacity) {
        size_t capacity = capture_capacity ? capture_capacity : 4096;
        while (capacity < required) capacity *= 2;
        char *grown = realloc(capture_buffer, capacity);
        if (!grown) return 0;
        capture_buffer = grown;
        capture_capacity = capacity;
    }
    vsnprintf(capture_buffer + capture_length, (size_t)needed + 1, format, args);
    capture_length += (size_t)needed;
    return needed;
}

static pthread_once_t print_once = PTHREAD_ONCE_INIT;
static void install_print(void) { libbpf_set_print(cbpf_print); }

void cbpf_log_capture_begin(void) {
    pthread_once(&print_once, install_print);
    capture_active = true;
    capture_length = 0;
    if (capture_buffer) capture_buffer[0] = '\0';
}

char *cbpf_log_capture_end(void) {
    capture_active = false;
    if (capture_length == 0) return NULL;
    char *result = capture_buffer;
    capture_buffer = NULL;
    capture_length = 0;
    capture_capacity = 0;
    return result;
}

struct bpf_object *cbpf_object_open_mem(const void *bytes, size_t size, const char *name,
                                        const char *btf_custom_path) {
    pthread_once(&print_once, install_print);
    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name, .btf_custom_path = btf_custom_path);
    return bpf_object__open_mem(bytes, size, &opts);
}

struct bpf_object *cbpf_object_open_file(const char *path, const char *name,
                                         const char *btf_custom_path) {
    pthread_once(&print_once, install_print);
    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name, .btf_custom_path = btf_custom_path);
    return bpf_object__open_file(path, &opts);
}

struct bpf_link *cbpf_attach_uprobe(const struct bpf_program *program, pid_t pid,
                                    const char *binary_path, const char *function_name,
                                    size_t offset, bool retprobe) {
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = retprobe, .func_name = function_name);
    return bpf_program__attach_uprobe_opts(program, pid, binary_path, offset, &opts);
}

struct bpf_link *cbpf_attach_kprobe(const struct bpf_program *program, const char *function_name,
                                    bool retprobe) {
    LIBBPF_OPTS(bpf_kprobe_opts, opts, .retprobe = retprobe);
    return bpf_program__attach_kprobe_opts(program, function_name, &opts);
}

int cbpf_link_create(int program_fd, int target_fd, enum bpf_attach_type attach_type) {
    return bpf_link_create(program_fd, target_fd, attach_type, NULL);
}

int cbpf_prog_test_run(int program_fd, void *context, uint32_t context_size, uint32_t *return_value) {
    LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = context, .ctx_size_in = context_size);
    int err = bpf_prog_test_run_opts(program_fd, &opts);
    if (err == 0 && return_value) *return_value = opts.retval;
    return err;
}

int cbpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                          uint32_t *count, uint64_t elem_flags) {
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = elem_flags);
    return bpf_map_lookup_batch(fd, in_batch, out_batch, keys, values, count, &opts);
}

int cbpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys,
                                     void *values, uint32_t *count, uint64_t elem_flags) {
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = elem_flags);
    return bpf_map_lookup_and_delete_batch(fd, in_batch, out_batch, keys, values, count, &opts);
}

int cbpf_map_update_batch(int fd, const void *keys, const void *values, uint32_t *count,
                          uint64_t elem_flags) {
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = elem_flags);
    return bpf_map_update_batch(fd, keys, values, count, &opts);
}

int cbpf_map_delete_batch(int fd, const void *keys, uint32_t *count, uint64_t elem_flags) {
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = elem_flags);
    return bpf_map_delete_batch(fd, keys, count, &opts);
}

int cbpf_map_create(enum bpf_map_type type, const char *name, uint32_t key_size,
                    uint32_t value_size, uint32_t max_entries, uint32_t map_flags) {
    LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = map_flags);
    return bpf_map_create(type, name, key_size, value_size, max_entries, &opts);
}

uint32_t cbpf_libbpf_major_version(void) { return LIBBPF_MAJOR_VERSION; }
uint32_t cbpf_libbpf_minor_version(void) { return LIBBPF_MINOR_VERSION; }

/* The kernel's struct sched_attr (version 0, 48 bytes), declared here: its
   uapi header clashes with glibc's <sched.h>. */
struct cbpf_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
};

int cbpf_sched_set_fair(pid_t thread, int nice, uint64_t slice_ns) {
    struct cbpf_sched_attr attr = {
        .size = sizeof attr, .sched_policy = 0 /* SCHED_OTHER */, .sched_nice = nice, .sched_runtime = slice_ns,
    };
    return syscall(SYS_sched_setattr, thread, &attr, 0) == 0 ? 0 : -errno;
}
