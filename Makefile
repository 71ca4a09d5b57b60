# The two set-up commands: `make demo` and `make test`. Both install what is
# missing (scripts/setup.sh) before building.
SWIFT ?= swift

.PHONY: setup build demo test bench docs clean

setup:
	@bash scripts/setup.sh

build: setup
	$(SWIFT) build

## Runs the demo: two processes in a mesh cgroup talking TCP through the sockmap shortcut.
demo: setup
	$(SWIFT) build --product mesh-demo
	.build/debug/mesh-demo

## Builds everything (tests, examples, benchmark) and runs the tests.
## Each run is bounded in time: a hung test fails it, naming the tests that never ended.
test: setup
	$(SWIFT) build --build-tests
	bash scripts/with-deadline.sh 900 $(SWIFT) test --skip-build --skip 'FairSharingTests|MeshProxyRedirectTests|RealSocketFuzzTests'
	@# The real-socket fuzz's 32 clients and their deadlines run apart from the timing-sensitive suites.
	bash scripts/with-deadline.sh 300 $(SWIFT) test --skip-build --filter RealSocketFuzzTests
	@# Suites that compare latencies run alone: other suites beside them would be the noise they measure.
	bash scripts/with-deadline.sh 300 $(SWIFT) test --skip-build --filter FairSharingTests
	@# A suite that moves the test process into a cgroup runs alone: no other test's sockets or children may follow it there.
	MESH_TEST_ALONE=1 bash scripts/with-deadline.sh 300 $(SWIFT) test --skip-build --filter MeshProxyRedirectTests

## Release-build benchmarks; results go to BENCHMARKS.md by hand.
bench:
	@bash scripts/setup.sh bench
	$(SWIFT) build -c release --product mesh-bench
	@# The proxy as it is deployed, the Swift runtime linked in (in a build directory of its own, so that neither build undoes the other).
	$(SWIFT) build -c release --product mesh-proxy --static-swift-stdlib --scratch-path .build/static
	MESH_PROXY_PROGRAM=.build/static/release/mesh-proxy .build/release/mesh-bench

clean:
	rm -rf .build

## Builds the DocC catalog of MeshKernel into .build-docs/MeshKernel.doccarchive (warnings are link or parameter gaps).
docs: setup
	$(SWIFT) build --target MeshKernel --scratch-path .build-docs -Xswiftc -emit-symbol-graph -Xswiftc -emit-symbol-graph-dir -Xswiftc .build-docs/symbol-graphs
	docc convert Sources/MeshKernel/Docs.docc --additional-symbol-graph-dir .build-docs/symbol-graphs --output-path .build-docs/MeshKernel.doccarchive --fallback-display-name MeshKernel --fallback-bundle-identifier swift-bpf-mesh.MeshKernel
