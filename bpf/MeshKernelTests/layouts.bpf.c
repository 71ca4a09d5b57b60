// Layouts for the bpf2swift tests: nested structs, padding, 2-D arrays, an
// anonymous and a named union, bitfields (signed too), an enum, chars, a bool,
// per-CPU values and globals in .rodata, .data and .bss. `inspect` reads a
// value Swift wrote and reports what C sees, so both sides' layouts are
// compared by the kernel, not by the generator.
#include "mesh_common.h"

char LICENSE[] SEC("license") = "GPL";

enum color { COLOR_RED = 1, COLOR_GREEN = 2, COLOR_BLUE = 400 };

struct inner {
    __u8 tag;
    __u32 value;
};

struct outer {
    __u16 id;
    __u64 big;
    struct inner nested;
    __u32 grid[2][3];
    union {
        __u64 as_u64;
        __u32 as_u32[2];
    };
    union {
        __u32 raw;
        struct {
            __u16 low;
            __u16 high;
        } halves;
    } named_union;
    __u32 flags_a : 3;
    __u32 flags_b : 12;
    __s32 signed_bits : 5;
    enum color color;
    char label[6];
    _Bool enabled;
};

struct report {
    __u64 sum;
    __s64 signed_bits;
    __u64 as_u32_high;
    __u32 flags_a;
    __u32 flags_b;
    __u32 color;
    __u32 enabled;
    __u32 halves_high;
    __u32 grid_1_2;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, struct inner);
    __type(value, struct outer);
} outers SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct report);
} reports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, struct inner);
} per_cpu_inner SEC(".maps");

const volatile __u32 multiplier = 1;
__u32 seeded = 7;
__u64 calls;
struct inner last_inner;

SEC("syscall")
int inspect(struct inner *context) {
    struct inner key = {};
    key.tag = context->tag;
    key.value = context->value;
    struct outer *outer = bpf_map_lookup_elem(&outers, &key);
    if (!outer) return 1;
    struct report report = {};
    __u64 sum = outer->id + outer->big + outer->nested.tag + outer->nested.value + outer->as_u64
        + outer->named_union.halves.low + outer->named_union.halves.high + outer->flags_a + outer->flags_b
        + outer->color + outer->enabled;
    for (int row = 0; row < 2; row++)
        for (int column = 0; column < 3; column++) sum += outer->grid[row][column];
    for (int index = 0; index < 6; index++) sum += (__u8)outer->label[index];
    report.sum = sum * multiplier;
    report.signed_bits = outer->signed_bits;
    report.as_u32_high = outer->as_u32[1];
    report.flags_a = outer->flags_a;
    report.flags_b = outer->flags_b;
    report.color = outer->color;
    report.enabled = outer->enabled;
    report.halves_high = outer->named_union.halves.high;
    report.grid_1_2 = outer->grid[1][2];
    __u32 zero = 0;
    bpf_map_update_elem(&reports, &zero, &report, BPF_ANY);
    struct inner *mine = bpf_map_lookup_elem(&per_cpu_inner, &zero);
    if (mine) {
        mine->tag = 9;
        mine->value = outer->nested.value;
    }
    __sync_fetch_and_add(&calls, 1);
    last_inner = key;
    return 0;
}
