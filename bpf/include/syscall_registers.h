/* The registers of the current system call, for tracing programs that read
 * its arguments (x86_64 only: other architectures are refused by the Swift
 * side). Includes the tracing macros (BPF_PROG, BPF_KPROBE) with the
 * kernel's register names, and the kernel's pt_regs by field name (CO-RE),
 * so no vmlinux.h is needed. */
#ifndef SYSCALL_REGISTERS_H
#define SYSCALL_REGISTERS_H

#ifndef __TARGET_ARCH_x86
#define __TARGET_ARCH_x86
#endif
#include "mesh_common.h"
/* The kernel's register names (di, si, ...), as in the struct below. */
#define __VMLINUX_H__
#include <bpf/bpf_tracing.h>
#undef __VMLINUX_H__

struct pt_regs {
    unsigned long di, si, dx, cx, r8, r9, ax, bp, sp, ip, orig_ax;
} __attribute__((preserve_access_index));

/* The current task's system call registers: a trusted pointer, read with direct loads. */
static __always_inline struct pt_regs *syscall_registers(void) {
    return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

#endif
