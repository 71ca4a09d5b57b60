# The two set-up commands: `make demo` and `make test`. Both install what is
# missing (scripts/setup.sh) before building.
SWIFT ?= swift

.PHONY: setup build demo test bench clean

setup:
	@bash scripts/setup.sh

build: setup
	$(SWIFT) build

## Runs the demo: two processes in a mesh cgroup talking TCP through the sockmap shortcut.
demo: setup
	$(SWIFT) build --product mesh-demo
	.build/debug/mesh-demo

## Builds everything (tests, examples, benchmark) and runs the tests.
test: setup
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

## Release-build benchmarks; results go to BENCHMARKS.md by hand.
bench: setup
	$(SWIFT) build -c release --product mesh-bench
	.build/release/mesh-bench

clean:
	rm -rf .build
