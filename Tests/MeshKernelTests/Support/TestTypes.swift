import MeshKernel

// The tests use the types bpf2swift generates from bpf/include/test_types.h;
// creating typed maps over them checks their layout against the object's BTF.

typealias FlowKey = MapsObject.FlowKey
typealias FlowStats = MapsObject.FlowStats
typealias TestEvent = MapsObject.TestEvent
typealias ProduceArgs = MapsObject.ProduceArgs
typealias Hit = AttachPointsObject.AttachPoint
