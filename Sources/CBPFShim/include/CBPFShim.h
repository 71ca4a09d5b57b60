// CBPFShim: the parts of libbpf that Swift cannot import directly.
//
// Only four kinds of things live here: libbpf's option structs (built with
// LIBBPF_OPTS so their `sz` field and zeroing are right), the variadic log
// callback, a per-thread capture of libbpf's messages, and system calls that
// only the variadic syscall(2) reaches. Everything else is called from Swift
// directly. Nothing above MeshKernel includes this header.
#ifndef CBPFSHIM_H
#define CBPFSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/bpf.h>
#include <sys/capability.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/statfs.h>
#include <sys/mount.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Routes libbpf's messages into a buffer owned by the calling thread.
/// Messages printed while no capture is active on a thread are discarded:
/// a library never writes to the process's stderr on its own.
void cbpf_log_capture_begin(void);

/// Ends the calling thread's capture and returns what libbpf printed since
/// `cbpf_log_capture_begin` as a NUL-terminated string the caller frees,
/// or NULL when nothing was printed.
char *cbpf_log_capture_end(void);

/// `bpf_object__open_mem` with options: an object name and, when not NULL,
/// the BTF file for CO-RE relocations.
struct bpf_object *cbpf_object_open_mem(const void *bytes, size_t size, const char *name,
                                        const char *btf_custom_path);

/// `bpf_object__open_file` with the same options as `cbpf_object_open_mem`.
struct bpf_object *cbpf_object_open_file(const char *path, const char *name,
                                         const char *btf_custom_path);

/// Attaches a uprobe (or uretprobe) to `function_name` (or, when NULL, to
/// `offset`) in `binary_path`, for process `pid` (-1: every process).
struct bpf_link *cbpf_attach_uprobe(const struct bpf_program *program, pid_t pid,
                                    const char *binary_path, const char *function_name,
                                    size_t offset, bool retprobe);

/// Attaches a kprobe (or kretprobe) to a kernel function.
struct bpf_link *cbpf_attach_kprobe(const struct bpf_program *program, const char *function_name,
                                    bool retprobe);

/// `bpf_link_create` without options: the kernel-link form of attaching
/// `program_fd` to `target_fd` (a cgroup, a sockmap/sockhash, ...).
int cbpf_link_create(int program_fd, int target_fd, enum bpf_attach_type attach_type);

/// Runs a program once through BPF_PROG_TEST_RUN with `context` as its
/// context (syscall, raw_tp programs) and reports its return value.
int cbpf_prog_test_run(int program_fd, void *context, uint32_t context_size, uint32_t *return_value);

/// Batch operations on a map (BPF_MAP_*_BATCH) with element and map flags.
int cbpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                          uint32_t *count, uint64_t elem_flags);
int cbpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys,
                                     void *values, uint32_t *count, uint64_t elem_flags);
int cbpf_map_update_batch(int fd, const void *keys, const void *values, uint32_t *count,
                          uint64_t elem_flags);
int cbpf_map_delete_batch(int fd, const void *keys, uint32_t *count, uint64_t elem_flags);

/// Creates a map outside any object (BPF_MAP_CREATE) with `map_flags`.
int cbpf_map_create(enum bpf_map_type type, const char *name, uint32_t key_size,
                    uint32_t value_size, uint32_t max_entries, uint32_t map_flags);

/// sched_setattr(2) for a thread of the normal (SCHED_OTHER) policy: its nice
/// value and its time slice in nanoseconds (0: the kernel's default). Returns
/// 0, or -errno. (glibc has no wrapper for sched_setattr.)
int cbpf_sched_set_fair(pid_t thread, int nice, uint64_t slice_ns);

/// Major and minor version of the libbpf this was built against.
uint32_t cbpf_libbpf_major_version(void);
uint32_t cbpf_libbpf_minor_version(void);

#ifdef __cplusplus
}
#endif

#endif
