# probe.S: the bare-metal 64-bit guest behind `vmm-mini probe`.
#
# Assembled by build.rs with binutils' `as` and cut to a flat binary with `objcopy`; the code is
# position independent (rip-relative strings, relative calls), vmm-mini loads it at PROBE_ENTRY.
#
# Entry state, set by vmm-mini (src/cpu.rs): 64-bit long mode, the first 4 GiB identity mapped,
# interrupts off, rsp = a stack, rdi = the seed of the data pattern, rsi = flags (FLAG_READ_ONLY:
# `vmm-mini probe --read-only`, nothing is written; bits REPEAT_SHIFT and up: `--repeat N`, the
# write to past-end checks run N more times, each round with the next pattern).
#
# The guest is a minimal virtio driver for the virtio-mmio (version 2) block device at
# MMIO_BASE: one 8-entry split virtqueue, one request at a time on descriptors 0-2, completion
# found by polling the used ring (no interrupts). Every check prints its name and "ok" on the
# 16550 at 0x3f8; a failure prints "FAIL" and writes the check's number to EXIT_PORT, success
# writes 0 there. Each check first writes its number to PROGRESS_PORT, so vmm-mini can name the
# check that hangs. Keep the instruction count tiny: this runs at about 1 us per instruction.

        .intel_syntax noprefix
        .code64

        .set MMIO_BASE, 0xd0000000      # keep in sync with layout::VIRTIO_MMIO_BASE
        .set SERIAL, 0x3f8
        .set EXIT_PORT, 0xf4            # layout::PROBE_EXIT_PORT
        .set PROGRESS_PORT, 0xf5        # layout::PROBE_PROGRESS_PORT

        # virtio-mmio registers (virtio 1.2, 4.2.2).
        .set MAGIC, 0x000
        .set VERSION, 0x004
        .set DEVICE_ID, 0x008
        .set DEVICE_FEATURES, 0x010
        .set DEVICE_FEATURES_SEL, 0x014
        .set DRIVER_FEATURES, 0x020
        .set DRIVER_FEATURES_SEL, 0x024
        .set QUEUE_SEL, 0x030
        .set QUEUE_NUM_MAX, 0x034
        .set QUEUE_NUM, 0x038
        .set QUEUE_READY, 0x044
        .set QUEUE_NOTIFY, 0x050
        .set STATUS_REG, 0x070
        .set QUEUE_DESC_LOW, 0x080
        .set QUEUE_DESC_HIGH, 0x084
        .set QUEUE_DRIVER_LOW, 0x090
        .set QUEUE_DRIVER_HIGH, 0x094
        .set QUEUE_DEVICE_LOW, 0x0a0
        .set QUEUE_DEVICE_HIGH, 0x0a4
        .set CONFIG, 0x100              # virtio_blk_config: capacity (u64) first

        # Guest-physical places of the driver's structures (inside the probe's memory).
        .set DESC, 0x20000              # descriptor table, QSIZE x 16 bytes
        .set AVAIL, 0x21000             # available ring: flags u16, idx u16, ring[QSIZE] u16
        .set USED, 0x22000              # used ring: flags u16, idx u16, ring[QSIZE] {id u32, len u32}
        .set REQ, 0x23000               # virtio_blk_outhdr: type u32, reserved u32, sector u64
        .set STATUS, 0x23100            # the status byte the device writes
        .set IDBUF, 0x23200             # GET_ID answer, 20 bytes and a NUL we add
        .set WBUF, 0x24000              # the pattern written, 1024 bytes
        .set RBUF, 0x28000              # the data read back, 1536 bytes
        .set BEFORE, 0x2c000            # read-only disks: the data before the refused writes
        .set QSIZE, 8

        # virtio-blk request types and descriptor flags.
        .set T_IN, 0
        .set T_OUT, 1
        .set T_FLUSH, 4
        .set T_GET_ID, 8
        .set F_NEXT, 1
        .set F_WRITE, 2
        .set BLK_F_RO, 1 << 5           # VIRTIO_BLK_F_RO: the device refuses writes
        .set FLAG_READ_ONLY, 1          # entry flag (rsi): keep in sync with src/probe.rs
        .set REPEAT_SHIFT, 8            # rsi >> REPEAT_SHIFT = rounds to repeat (src/probe.rs)

        # Check numbers, also the exit code: keep in sync with CHECKS in src/probe.rs.
        .set CHECK_DEVICE, 1
        .set CHECK_FEATURES, 2
        .set CHECK_QUEUE, 3
        .set CHECK_CAPACITY, 4
        .set CHECK_ID, 5
        .set CHECK_WRITE, 6
        .set CHECK_FLUSH, 7
        .set CHECK_READ, 8
        .set CHECK_COMPARE, 9
        .set CHECK_PAST_END, 10

# begin CHECK, NAME: announce a check on PROGRESS_PORT and print its name.
        .macro begin check, name
        mov ebp, \check
        mov eax, ebp
        out PROGRESS_PORT, al
        lea rsi, [rip + \name]
        call puts
        .endm

# Register use: rbx = MMIO_BASE, rbp = current check, r12 = pattern seed, r13 = avail idx,
# r14 = nonzero if the compare check expects the data from before (a read-only device or a
# read-only probe), r15 = capacity in sectors, r10 = FLAG_READ_ONLY if the probe must not write,
# r9 = rounds still to repeat.
#
# A read-only device (VIRTIO_BLK_F_RO offered) turns the write check around: the guest reads
# the sectors first, its writes must end with IOERR, and the compare check expects the data
# read afterwards to be what was there before. A read-only probe (FLAG_READ_ONLY) reads the
# sectors in the write check and sends no write at all; the compare check then expects the
# second read to return the same data.
        .text
        .globl _start
_start:
        mov r12, rdi
        mov r10, rsi
        mov r9, rsi
        shr r9, REPEAT_SHIFT
        and r10d, FLAG_READ_ONLY
        xor r13d, r13d
        mov ebx, MMIO_BASE

        # The device is virtio-mmio version 2 and a block device (type 2).
        begin CHECK_DEVICE, s_device
        cmp dword ptr [rbx + MAGIC], 0x74726976         # "virt"
        jne fail
        cmp dword ptr [rbx + VERSION], 2
        jne fail
        cmp dword ptr [rbx + DEVICE_ID], 2
        jne fail
        call ok

        # Reset, ACKNOWLEDGE|DRIVER, accept VERSION_1 (and FLUSH and RO if offered), FEATURES_OK
        # sticks.
        begin CHECK_FEATURES, s_features
        mov dword ptr [rbx + STATUS_REG], 0
        mov dword ptr [rbx + STATUS_REG], 3
        mov dword ptr [rbx + DEVICE_FEATURES_SEL], 1
        test dword ptr [rbx + DEVICE_FEATURES], 1        # VIRTIO_F_VERSION_1 is bit 32
        jz fail
        mov dword ptr [rbx + DRIVER_FEATURES_SEL], 1
        mov dword ptr [rbx + DRIVER_FEATURES], 1
        mov dword ptr [rbx + DEVICE_FEATURES_SEL], 0
        mov eax, [rbx + DEVICE_FEATURES]
        and eax, (1 << 9) | BLK_F_RO                    # VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO
        mov r14d, eax
        and r14d, BLK_F_RO
        or r14d, r10d
        mov dword ptr [rbx + DRIVER_FEATURES_SEL], 0
        mov [rbx + DRIVER_FEATURES], eax
        mov dword ptr [rbx + STATUS_REG], 11
        test dword ptr [rbx + STATUS_REG], 8
        jz fail
        call ok

        # Queue 0 with QSIZE entries, then DRIVER_OK (vmm-mini starts the backend's vring here
        # and sets DEVICE_NEEDS_RESET if that fails).
        begin CHECK_QUEUE, s_queue
        mov dword ptr [rbx + QUEUE_SEL], 0
        cmp dword ptr [rbx + QUEUE_NUM_MAX], QSIZE
        jb fail
        mov dword ptr [rbx + QUEUE_NUM], QSIZE
        mov dword ptr [rbx + QUEUE_DESC_LOW], DESC
        mov dword ptr [rbx + QUEUE_DESC_HIGH], 0
        mov dword ptr [rbx + QUEUE_DRIVER_LOW], AVAIL
        mov dword ptr [rbx + QUEUE_DRIVER_HIGH], 0
        mov dword ptr [rbx + QUEUE_DEVICE_LOW], USED
        mov dword ptr [rbx + QUEUE_DEVICE_HIGH], 0
        mov dword ptr [rbx + QUEUE_READY], 1
        mov dword ptr [rbx + STATUS_REG], 15
        test dword ptr [rbx + STATUS_REG], 0x40         # DEVICE_NEEDS_RESET
        jnz fail
        call ok

        # Capacity from config space; the probe needs at least 3 sectors.
        begin CHECK_CAPACITY, s_capacity
        mov r15, [rbx + CONFIG]
        mov rdi, r15
        call puthex
        cmp r15, 3
        jb fail
        call ok

        # GET_ID: the device's serial, up to 20 bytes.
        begin CHECK_ID, s_id
        mov edi, T_GET_ID
        xor esi, esi
        mov edx, IDBUF
        mov ecx, 20
        mov r8d, F_WRITE
        call request
        test al, al
        jnz fail
        mov byte ptr [IDBUF + 20], 0
        mov esi, IDBUF
        call puts
        call ok

        # Pattern: qword i of WBUF = seed + i. Sectors 0-1 get WBUF, the last sector WBUF+512.
        # On a read-only device the same sectors are read into BEFORE first and both writes
        # must end with IOERR.
again:
        begin CHECK_WRITE, s_write
        test r10d, r10d
        jz 4f
        lea rsi, [rip + s_no_write]
        call puts
        mov edx, BEFORE
        call read_sectors
        test al, al
        jnz fail
        call ok
        jmp 5f
4:      test r14d, r14d
        jz 3f
        lea rsi, [rip + s_read_only]
        call puts
        mov edx, BEFORE
        call read_sectors
        test al, al
        jnz fail
3:      mov edi, WBUF
        mov rax, r12
        mov ecx, 128
1:      mov [rdi], rax
        add rdi, 8
        inc rax
        dec ecx
        jnz 1b
        mov edi, T_OUT
        xor esi, esi
        mov edx, WBUF
        mov ecx, 1024
        xor r8d, r8d
        call request
        call check_write_status
        mov edi, T_OUT
        lea rsi, [r15 - 1]
        mov edx, WBUF + 512
        mov ecx, 512
        xor r8d, r8d
        call request
        call check_write_status
        call ok

5:      begin CHECK_FLUSH, s_flush
        mov edi, T_FLUSH
        xor esi, esi
        xor edx, edx
        xor ecx, ecx
        xor r8d, r8d
        call request
        test al, al
        jnz fail
        call ok

        begin CHECK_READ, s_read
        mov edx, RBUF
        call read_sectors
        test al, al
        jnz fail
        call ok

        # Writable: what was read is the pattern. Read-only device or probe: it is what was
        # there before.
        begin CHECK_COMPARE, s_compare
        mov esi, WBUF
        mov eax, BEFORE
        test r14d, r14d
        cmovnz esi, eax
        mov edi, RBUF
        mov ecx, 128
        repe cmpsq
        jne fail
        mov esi, WBUF + 512
        mov eax, BEFORE + 1024
        test r14d, r14d
        cmovnz esi, eax
        mov edi, RBUF + 1024
        mov ecx, 64
        repe cmpsq
        jne fail
        call ok

        # A read of the sector at the capacity must fail with VIRTIO_BLK_S_IOERR (1).
        # A live resize may have grown the disk since the capacity was read: then the read
        # succeeds and is made again past the new end.
        begin CHECK_PAST_END, s_past_end
7:      mov edi, T_IN
        mov rsi, r15
        mov edx, RBUF
        mov ecx, 512
        mov r8d, F_WRITE
        call request
        cmp al, 1
        je 8f
        test al, al
        jnz fail
        mov rax, [rbx + CONFIG]
        cmp rax, r15
        jbe fail
        mov r15, rax
        jmp 7b
8:      call ok

        # --repeat: another round with the next pattern, against the capacity as it is now (a
        # live resize changes it; it never drops below 3 sectors here, or the round fails).
        test r9, r9
        jz 6f
        dec r9
        add r12, 128
        mov r15, [rbx + CONFIG]
        cmp r15, 3
        jb fail
        jmp again

6:      lea rsi, [rip + s_pass]
        call puts
        xor eax, eax
        out EXIT_PORT, al
2:      hlt
        jmp 2b

# fail: print FAIL, report the current check (rbp) on EXIT_PORT, stop.
fail:
        lea rsi, [rip + s_fail]
        call puts
        mov eax, ebp
        out EXIT_PORT, al
1:      hlt
        jmp 1b

# read_sectors: reads sectors 0-1 to [rdx] and the last sector to [rdx + 1024].
# Out: al = 0 if both reads succeeded, else the failing status.
read_sectors:
        push rdx
        mov edi, T_IN
        xor esi, esi
        mov ecx, 1024
        mov r8d, F_WRITE
        call request
        pop rdx
        test al, al
        jnz 1f
        mov edi, T_IN
        lea rsi, [r15 - 1]
        add edx, 1024
        mov ecx, 512
        mov r8d, F_WRITE
        call request
1:      ret

# check_write_status: al is a write's status; it must be OK (0), or IOERR (1) on a read-only
# device. Jumps to fail otherwise.
check_write_status:
        test r14d, r14d
        jnz 1f
        test al, al
        jnz fail
        ret
1:      cmp al, 1
        jne fail
        ret

# request: one virtio-blk request on descriptors 0 (header), 1 (data), 2 (status); waits for it.
# In: edi type, rsi sector, rdx data address, ecx data length (0: no data descriptor),
#     r8d data descriptor flags (F_WRITE when the device writes the buffer).
# Out: al = the status byte (0 OK, 1 IOERR, 2 UNSUPP). Spins until the device answers:
#     vmm-mini's watchdog names the check if it never does.
request:
        mov dword ptr [REQ], edi
        mov dword ptr [REQ + 4], 0
        mov qword ptr [REQ + 8], rsi
        mov byte ptr [STATUS], 0xff
        mov qword ptr [DESC], REQ                       # descriptor 0: the header
        mov dword ptr [DESC + 8], 16
        mov word ptr [DESC + 12], F_NEXT
        mov word ptr [DESC + 14], 1
        mov qword ptr [DESC + 16], rdx                  # descriptor 1: the data
        mov dword ptr [DESC + 24], ecx
        or r8d, F_NEXT
        mov word ptr [DESC + 28], r8w
        mov word ptr [DESC + 30], 2
        test ecx, ecx
        jnz 1f
        mov word ptr [DESC + 14], 2                     # no data: header chains to the status
1:      mov qword ptr [DESC + 32], STATUS               # descriptor 2: the status byte
        mov dword ptr [DESC + 40], 1
        mov word ptr [DESC + 44], F_WRITE
        mov word ptr [DESC + 46], 0
        mov eax, r13d                                   # avail.ring[idx % QSIZE] = head 0
        and eax, QSIZE - 1
        mov word ptr [AVAIL + 4 + rax * 2], 0
        inc r13d
        mov word ptr [AVAIL + 2], r13w                  # then avail.idx
        mfence
        mov dword ptr [rbx + QUEUE_NOTIFY], 0           # kick queue 0 (a KVM ioeventfd)
2:      pause
        cmp word ptr [USED + 2], r13w                   # until used.idx catches up
        jne 2b
        mov al, byte ptr [STATUS]
        ret

# puts: write the NUL-terminated string at rsi to the serial port. Clobbers rsi, al, dx.
puts:
        mov dx, SERIAL
1:      lodsb
        test al, al
        jz 2f
        out dx, al
        jmp 1b
2:      ret

# puthex: write rdi as 0x and 16 hex digits. Clobbers rdi, rsi, eax, ecx, dx.
puthex:
        lea rsi, [rip + s_hex]
        call puts
        mov ecx, 16
1:      rol rdi, 4
        mov eax, edi
        and eax, 15
        cmp al, 10
        jb 2f
        add al, 'a' - '0' - 10
2:      add al, '0'
        out dx, al
        dec ecx
        jnz 1b
        ret

ok:
        lea rsi, [rip + s_ok]
        jmp puts

s_device:   .asciz "device"
s_features: .asciz "features"
s_queue:    .asciz "queue"
s_capacity: .asciz "capacity "
s_id:       .asciz "id "
s_write:    .asciz "write"
s_read_only: .asciz " (read-only: refused with ioerr)"
s_no_write: .asciz " (--read-only: nothing written, sectors read)"
s_flush:    .asciz "flush"
s_read:     .asciz "read"
s_compare:  .asciz "compare"
s_past_end: .asciz "past-end ioerr"
s_hex:      .asciz "0x"
s_ok:       .asciz " ok\n"
s_fail:     .asciz " FAIL\n"
s_pass:     .asciz "PASS\n"
