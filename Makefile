# vmfork: top-level build.  `make demo` and `make check` are the two
# commands a user needs; both build whatever is missing first.
#
# As root, missing Debian packages are installed (bookworm-backports is
# enabled for meson >= 1.5 and python3-pycotap); otherwise the exact
# apt-get command is printed.  See scripts/install-deps.sh.

MESON_BUILD := build/meson
TOOLS       := qmp-tools/vmfork qmp-tools/qmp-call bench/vmfork-bench

.PHONY: all deps qemu tools check check-unit check-sanitize check-qemu soak fuzz demo bench clean distclean help

all: deps qemu guests tools

help:
	@echo "make            build patched QEMU, test guests and tools (installs Debian packages as root)"
	@echo "make demo       build, boot the Linux guest, fork it, show parent and child"
	@echo "make check      build and run every test suite (meson test, TAP)"
	@echo "make bench      run the benchmarks"
	@echo "make soak       longer reliability runs (200-fork storms)"
	@echo "make check-sanitize  the suites on an ASan+UBSan QEMU and libqmp (slow)"
	@echo "make check-qemu  QEMU's own unit, qtest-x86_64 and block suites, patched vs release (slow)"
	@echo "make fuzz       fuzz libqmp's reader for FUZZ_SECONDS (60)"
	@echo "make clean      remove build/ (the QEMU cache in ~/.cache/vmfork stays)"

deps:
	@scripts/install-deps.sh

qemu: deps
	@scripts/build-qemu.sh

include tests/guest/guest.mk

$(MESON_BUILD)/build.ninja:
	meson setup $(MESON_BUILD) --buildtype=debugoptimized

tools: deps $(MESON_BUILD)/build.ninja
	meson compile -C $(MESON_BUILD)
	@mkdir -p build/tools
	@for t in $(TOOLS); do \
	    if [ -x $(MESON_BUILD)/$$t ]; then ln -sf ../meson/$$t build/tools/$$(basename $$t); fi; \
	done

# A failure ends the output with what the failed tests said (CI keeps
# only the output's tail)
check: all
	meson test -C $(MESON_BUILD) --print-errorlogs $(MESON_TEST_ARGS) || \
	    { scripts/test-failures.py $(MESON_BUILD); exit 1; }

check-unit: deps tools
	meson test -C $(MESON_BUILD) --print-errorlogs --suite unit

# The benchmarks and their peers (results in build/bench/)
bench: all
	@scripts/bench.sh $(BENCH_ARGS)

# The libFuzzer target for libqmp's reader, for FUZZ_SECONDS (installs
# clang and libclang-rt-14-dev as root)
FUZZ_SECONDS ?= 60
fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

# Longer reliability runs than make check's bounded ones
soak: all
	VMFORK_STORM=200 meson test -C $(MESON_BUILD) --print-errorlogs test-reliability

# A second QEMU build with ASan+UBSan runs the functional and reliability
# suites; libqmp and the tools run their unit tests under ASan+UBSan
check-sanitize: all
	@scripts/check-sanitize.sh

# QEMU's own suites (unit, qtest-x86_64, block) on the patched tree and on
# the release, compared test by test (results in build/check-qemu/; see
# docs/check-qemu.md).  CHECK_QEMU_ARGS=--reuse-release reuses the
# release's results of an earlier run.
check-qemu: deps
	@scripts/check-qemu.sh $(CHECK_QEMU_ARGS)

demo: all
	@scripts/demo.sh

clean:
	rm -rf build

distclean: clean
	@echo "the QEMU source/build cache is ${XDG_CACHE_HOME:-$$HOME/.cache}/vmfork; remove it by hand if wanted"
