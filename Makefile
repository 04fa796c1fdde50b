# execmem: `make run` boots the demo in QEMU, `make test` runs every test. Both install what is
# missing first (.ci/setup). BOARD=virt (default) or BOARD=rpi4 (any folder under board/).

BOARD ?= virt
TARGET := aarch64-unknown-none
BOARDS := $(patsubst board/%/,%,$(sort $(wildcard board/*/)))
ifeq ($(filter $(BOARD),$(BOARDS)),)
$(error BOARD=$(BOARD) is not a board; the boards are: $(BOARDS))
endif

KERNEL_ELF := target/$(TARGET)/release/execmem
IMAGE_DIR := out/$(BOARD)
IMAGE_ELF := target/image/$(TARGET)/release/execmem
LLVM_OBJCOPY = $(shell rustc --print sysroot)/lib/rustlib/$(shell rustc -vV | sed -n 's/^host: //p')/bin/llvm-objcopy
# The board's first boot mode, as the QEMU runner starts it (tests/runner/qemu-args).
QEMU_ARGS = $(shell tests/runner/qemu-args $(BOARD) first | cut -d' ' -f3-)

BENCH_DIR := out/bench

.PHONY: run test bench stress image gdb setup clean

## run: boot the demo kernel on BOARD in QEMU (the board's first boot mode)
run: setup
	EXECMEM_BOARD=$(BOARD) EXECMEM_MODES=first \
	    cargo run --release --target $(TARGET) --features board-$(BOARD),qemu --bin execmem

## test: host unit tests, clippy, rustfmt, QEMU integration tests on every board and boot mode
test: setup
	tests/runner/suite

## bench: the benchmark kernel on virt under -icount shift=0 (exact instruction counts); the table
## is printed and kept in out/bench/results.txt, the figures in out/bench/results.json
bench: setup
	mkdir -p $(BENCH_DIR)
	EXECMEM_BOARD=virt EXECMEM_MODES=virt-el1 EXECMEM_QEMU_EXTRA="-icount shift=0" EXECMEM_QEMU_TIMEOUT=3000 \
	    cargo run --release --target $(TARGET) --features board-virt,qemu --bin bench | tee $(BENCH_DIR)/bench.log
	sed -n '/^BEGIN results.json/,/^END results.json/p' $(BENCH_DIR)/bench.log | sed '1d;$$d' > $(BENCH_DIR)/results.json
	sed '/^BEGIN results.json/,$$d' $(BENCH_DIR)/bench.log > $(BENCH_DIR)/results.txt
	@echo "figures: $(BENCH_DIR)/results.txt and $(BENCH_DIR)/results.json"

## stress: every CPU at once allocating, JITting, calling (on another CPU) and freeing slots,
## 100,000 operations per CPU, on each board in its first boot mode (make test runs 1,000)
stress: setup
	for board in $(BOARDS); do \
	    EXECMEM_BOARD=$$board EXECMEM_MODES=first EXECMEM_QEMU_TIMEOUT=7200 \
	        cargo test --release --target $(TARGET) --features board-$$board,qemu,stress-full --test stress || exit 1; \
	done

## image: kernel8.img (+ config.txt) for an SD card, without any QEMU-only code
image: setup
	cargo build --release --target $(TARGET) --features board-$(BOARD) --bin execmem --target-dir target/image
	mkdir -p $(IMAGE_DIR)
	$(LLVM_OBJCOPY) -O binary $(IMAGE_ELF) $(IMAGE_DIR)/kernel8.img
	cp $(IMAGE_ELF) $(IMAGE_DIR)/execmem.elf
	if [ -f board/$(BOARD)/config.txt ]; then cp board/$(BOARD)/config.txt $(IMAGE_DIR)/; fi
	@echo "$(IMAGE_DIR): $$(ls $(IMAGE_DIR) | tr '\n' ' ')"
	@if [ "$(BOARD)" = rpi4 ]; then echo "copy kernel8.img and config.txt to the SD card's boot partition, next to the Raspberry Pi firmware (start4.elf, fixup4.dat, bcm2711-rpi-4-b.dtb)"; fi

## gdb: start the demo in QEMU halted, waiting for a debugger on localhost:1234
gdb: setup
	cargo build --release --target $(TARGET) --features board-$(BOARD),qemu --bin execmem
	@echo "QEMU is waiting for a debugger. In another terminal:"
	@echo "  gdb-multiarch $(KERNEL_ELF) -ex 'target remote localhost:1234'"
	@echo "(Debian/Ubuntu: apt-get install gdb-multiarch). Quit QEMU with Ctrl-A x."
	qemu-system-aarch64 $(QEMU_ARGS) -nographic -semihosting -no-reboot -kernel $(KERNEL_ELF) -s -S

setup:
	@.ci/setup

clean:
	cargo clean
	rm -rf out
