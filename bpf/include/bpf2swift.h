/* bpf2swift: mark C types that Swift needs but no map or global variable
 * uses (ring buffer events, enums of counter slots, syscall contexts).
 *
 *     BPF2SWIFT_EXPORT(struct flow_event);
 *
 * places an unused variable of that type in the `.bpf2swift` section, so the
 * type stays in the object's BTF; libbpf skips the section when loading. */
#ifndef BPF2SWIFT_H
#define BPF2SWIFT_H

#define BPF2SWIFT_CONCAT_(a, b) a##b
#define BPF2SWIFT_CONCAT(a, b) BPF2SWIFT_CONCAT_(a, b)
#define BPF2SWIFT_EXPORT(type) \
    type BPF2SWIFT_CONCAT(__bpf2swift_export_, __COUNTER__) __attribute__((section(".bpf2swift"), used))

#endif
