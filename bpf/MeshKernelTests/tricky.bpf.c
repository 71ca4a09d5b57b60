// Layouts and names that trip generators: a packed struct inside an array, a C
// type named like a skeleton member, colliding member names, a member named
// self, a _Bool, an anonymous union, a map named object, and bpf_printk (which
// leaves a compiler-made static in .rodata).
#include "mesh_common.h"
#include "bpf2swift.h"
char LICENSE[] SEC("license") = "GPL";
struct programs { __u32 value; };
struct pk { __u64 a; __u8 b; } __attribute__((packed));
struct holder { struct pk items[2]; __u32 tail; };
struct weird { __u32 src_ip; __u32 srcIp; __u8 self; _Bool flag; union { __u32 q; __u16 halves[2]; }; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4); __type(key, struct programs); __type(value, struct holder); } object SEC(".maps");
BPF2SWIFT_EXPORT(struct weird);
SEC("syscall") int loaded(void *ctx) { bpf_printk("hello %d", 1); return 0; }
