"""Reading sm_90 SASS and resource usage (``cuobjdump -sass`` / ``-res-usage`` text).

The census counts what decides a kernel's speed in its compiled code: global load widths
(LDG by width, LDGSTS = ``cp.async``, UTMALDG = TMA), tensor-core kind (HGMMA/IGMMA/QGMMA =
``wgmma`` vs HMMA/IMMA = ``mma.sync``), barriers, shared stores and local-memory (spill)
traffic, for the whole kernel and for its main loop.

Main loop: every backward branch (``BRA`` to a lower address) closes a loop spanning
[target, branch]. The main loop is the innermost loop holding the kernel's streamed work: the
loops that contain a tensor-core instruction (or, in a kernel without tensor-core
instructions in loops, its widest global load: LDG / LDGSTS / UTMALDG), keeping those that
contain no other such loop, and of these the one with the most instructions. Counts are static: an
unrolled body counts every copy, not-taken paths inside the loop count too, and a loop nested
inside the main loop counts once.
"""

from __future__ import annotations

import collections
import dataclasses
import re

_FUNC = re.compile(r"Function\s*:\s*(\S+)")
# /*0a30*/  @!P0 LDG.E.128 R4, desc[UR6][R2.64] ;
_INSN = re.compile(
    r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(@!?U?P[0-9T]+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);"
)
_RES_FUNC = re.compile(r"Function\s+(\S+):")
_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_TARGET = re.compile(r"0x([0-9a-fA-F]+)")

WGMMA = ("HGMMA", "IGMMA", "QGMMA")
# the arithmetic of a dequantization: fp32 and packed fp16 FMAs, bit logic, byte permutes,
# conversions, and the integer compares and 64-bit address arithmetic around them
ALU = ("FFMA", "HFMA2", "FMUL", "LOP3", "PRMT", "SHF", "I2F", "I2FP", "F2F", "F2FP", "ISETP",
       "IMAD", "IADD3")  # fmt: skip
MMA_SYNC = ("HMMA", "IMMA")


@dataclasses.dataclass(frozen=True)
class Insn:
    addr: int
    opcode: str  # with modifiers, e.g. "LDG.E.128"
    operands: str
    predicated: bool = False

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]


def parse_sass(text: str) -> dict[str, list[Insn]]:
    """Function name (mangled) -> its instructions in program order."""
    out: dict[str, list[Insn]] = {}
    cur = None
    for line in text.splitlines():
        m = _FUNC.search(line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        if cur is None:
            continue
        m = _INSN.match(line)
        if m:
            cur.append(Insn(int(m.group(1), 16), m.group(3), m.group(4).strip(), bool(m.group(2))))
    return out


def parse_res_usage(text: str) -> dict[str, dict[str, int]]:
    """Function name -> {registers, stack_bytes, shared_bytes, local_bytes}."""
    res, fn = {}, None
    for line in text.splitlines():
        m = _RES_FUNC.search(line)
        if m:
            fn = m.group(1)
            continue
        m = _RES.search(line)
        if m and fn:
            reg, stack, shared, local = (int(g) for g in m.groups())
            res[fn] = dict(registers=reg, stack_bytes=stack, shared_bytes=shared, local_bytes=local)
            fn = None
    return res


def _width(opcode: str) -> int:
    """Bits moved per thread by a load/store opcode (32 without a size modifier)."""
    mods = opcode.split(".")[1:]
    for m in mods:
        if m in ("128", "64"):
            return int(m)
        if m in ("U16", "S16"):
            return 16
        if m in ("U8", "S8"):
            return 8
    return 32


def load_kind(insn: Insn) -> str | None:
    """'LDG.<bits>', 'LDGSTS.<bits>' (cp.async), 'TMA', 'FLAG' or None for other instructions.

    'FLAG': a 32-bit (or narrower) load with GPU- or system-scope ordering (``LDG.E.STRONG.GPU``:
    ``ld.acquire.gpu`` / ``ld.relaxed.gpu``), which is how a kernel polls another CTA's counter
    in an in-kernel hand-off; data loaded through L2 (``.cg``) is as wide as it is."""
    b = insn.base
    if b == "LDG":
        w = _width(insn.opcode)
        mods = insn.opcode.split(".")
        if w <= 32 and "STRONG" in mods and ("GPU" in mods or "SYS" in mods):
            return "FLAG"
        return f"LDG.{w}"
    if b == "LDGSTS":
        return f"LDGSTS.{_width(insn.opcode)}"
    if b in ("UTMALDG", "UBLKCP"):
        return "TMA"
    return None


def is_mma(insn: Insn) -> bool:
    return insn.base in WGMMA or insn.base in MMA_SYNC


def census(insns: list[Insn]) -> dict:
    """Counts over a list of instructions (a kernel or a loop body)."""
    loads: collections.Counter = collections.Counter()
    mma: collections.Counter = collections.Counter()
    alu: collections.Counter = collections.Counter()
    c = collections.Counter()
    for i in insns:
        k = load_kind(i)
        if k:
            loads[k] += 1
        b = i.base
        if is_mma(i):
            mma[b] += 1
        if b in ALU:
            alu[b] += 1
        if b == "BAR":
            c["barriers"] += 1
        elif b == "STS":
            c["shared_stores"] += 1
        elif b in ("LDS", "LDSM"):
            c["shared_loads"] += 1
        elif b == "LDL":
            c["local_loads"] += 1
            c["local_bytes"] += _width(i.opcode) // 8
        elif b == "STL":
            c["local_stores"] += 1
            c["local_bytes"] += _width(i.opcode) // 8
        elif b == "SYNCS":
            c["mbarrier_ops"] += 1
    return dict(
        instructions=len(insns),
        loads=dict(sorted(loads.items())),
        mma=dict(sorted(mma.items())),
        alu=dict(sorted(alu.items())),
        barriers=c["barriers"],
        shared_stores=c["shared_stores"],
        shared_loads=c["shared_loads"],
        mbarrier_ops=c["mbarrier_ops"],
        local_ops=c["local_loads"] + c["local_stores"],
        local_bytes=c["local_bytes"],
    )


def mma_kind(counts: dict) -> str:
    """'wgmma:HGMMA', 'mma.sync:HMMA', ... or 'none' (the first kind found, wgmma first)."""
    mma = counts.get("mma", {})
    for b in WGMMA:
        if mma.get(b):
            return f"wgmma:{b}"
    for b in MMA_SYNC:
        if mma.get(b):
            return f"mma.sync:{b}"
    return "none"


def loops(insns: list[Insn]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of every backward-branch region."""
    index = {i.addr: n for n, i in enumerate(insns)}
    out = []
    for n, i in enumerate(insns):
        if i.base not in ("BRA", "BRX"):
            continue
        m = _TARGET.search(i.operands)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target <= i.addr and target in index:
            out.append((index[target], n))
    return out


def _load_bits(insn: Insn) -> int:
    k = load_kind(insn)
    if k is None:
        return 0
    if k == "FLAG":
        return 32
    return 1024 if k == "TMA" else int(k.rsplit(".", 1)[1])


def main_loop(insns: list[Insn]) -> list[Insn]:
    """The instructions of the main loop (see the module docstring); [] if there is none."""
    all_loops = loops(insns)
    cands = [(a, b) for a, b in all_loops if any(is_mma(i) for i in insns[a : b + 1])]
    if not cands:  # no tensor cores: the loops holding the widest global loads (the weights)
        widths = [_load_bits(i) for a, b in all_loops for i in insns[a : b + 1]]
        widest = max(widths, default=0)
        cands = [
            (a, b)
            for a, b in all_loops
            if widest and any(_load_bits(i) == widest for i in insns[a : b + 1])
        ]
    inner = [
        (a, b)
        for a, b in cands
        if not any((c, d) != (a, b) and a <= c and d <= b for c, d in cands)
    ]
    if not inner:
        return []
    a, b = max(inner, key=lambda ab: ab[1] - ab[0])
    return insns[a : b + 1]


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> readable names via c++filt when present (identity otherwise)."""
    import shutil
    import subprocess

    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != len(names):
        return {n: n for n in names}
    return dict(zip(names, lines, strict=True))


def short_name(readable: str) -> str:
    """'void ns::(anonymous namespace)::quant_gemv_kernel<4, 1>(ns::GemvParams)' ->
    'quant_gemv_kernel<4, 1>'."""
    s = readable
    if "(" in s:
        depth, cut = 0, len(s)
        for n, ch in enumerate(s):  # the first '(' outside template brackets opens the params
            if ch == "<":
                depth += 1
            elif ch == ">":
                depth -= 1
            elif ch == "(" and depth == 0 and not s[n:].startswith("(anonymous"):
                cut = n
                break
        s = s[:cut]
    s = s.removeprefix("void ").strip()
    head, sep, tmpl = s.partition("<")
    head = head.split("::")[-1]
    return head + sep + re.sub(r"\b\w+::", "", tmpl)
