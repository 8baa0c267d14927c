/* A CPU without AVX-512, VNNI, bf16 or AMX, for a whole process and every library in it.
 *
 * Preloaded (LD_PRELOAD=avx2_cpu.so), it turns on Linux's CPUID faulting (arch_prctl
 * ARCH_SET_CPUID, where the processor and kernel offer it: "cpuid_fault" in /proc/cpuinfo) and
 * answers each CPUID instruction itself: the real answer with the AVX-512, AVX-VNNI, bf16, fp16
 * and AMX feature bits cleared. ONNX Runtime's MLAS, oneDNN in OpenVINO, numpy and OpenCV then
 * choose their AVX2 kernels, as on an AMD EPYC of the Zen 2/3 generations; ONEDNN_MAX_CPU_ISA
 * limits OpenVINO alone. glibc reads CPUID before this library loads: limit it with
 * GLIBC_TUNABLES (benchmarks/precision_speed.py does). The count of answered CPUIDs is printed at
 * exit when AVX2_CPU_VERBOSE is set.
 *
 *     gcc -O2 -shared -fPIC -o avx2_cpu.so avx2_cpu.c
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

/* leaf 7, subleaf 0: EBX AVX512F, DQ, IFMA, PF, ER, CD, BW, VL */
#define LEAF7_EBX ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
/* ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
#define LEAF7_ECX ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* EDX: 4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8 */
#define LEAF7_EDX ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* leaf 7, subleaf 1: EAX AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA */
#define LEAF7_1_EAX ((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23))

static volatile unsigned long answered;

static void cpuid_limited(unsigned leaf, unsigned subleaf, unsigned r[4]) {
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && subleaf == 0) {
        r[1] &= ~LEAF7_EBX;
        r[2] &= ~LEAF7_ECX;
        r[3] &= ~LEAF7_EDX;
    } else if (leaf == 7 && subleaf == 1) {
        r[0] &= ~LEAF7_1_EAX;
    } else if (leaf == 0x1d || leaf == 0x1e) { /* AMX tile and TMUL information */
        r[0] = r[1] = r[2] = r[3] = 0;
    }
}

static void on_segv(int signal_number, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    (void)info;
    if (ip[0] != 0x0f || ip[1] != 0xa2) { /* not CPUID: fault as without this library */
        signal(signal_number, SIG_DFL);
        return;
    }
    unsigned r[4];
    cpuid_limited((unsigned)regs[REG_RAX], (unsigned)regs[REG_RCX], r);
    regs[REG_RAX] = r[0];
    regs[REG_RBX] = r[1];
    regs[REG_RCX] = r[2];
    regs[REG_RDX] = r[3];
    regs[REG_RIP] += 2;
    answered++;
}

static void report(void) {
    if (getenv("AVX2_CPU_VERBOSE"))
        fprintf(stderr, "avx2_cpu: %lu CPUID instructions answered in process %d\n", answered, getpid());
}

__attribute__((constructor)) static void limit_cpuid(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "avx2_cpu: this CPU or kernel has no CPUID faulting; the CPU is not limited\n");
        exit(3);
    }
    atexit(report);
}
