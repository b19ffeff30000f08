"""check(name, fn): run a learner's function on the fixtures and say, in one line, how it did.

Verdicts: "exact", "allclose (max diff 2.4e-07)", "not implemented yet", or "WRONG: ..." with the
largest difference and, when the answer matches one of the classic mistakes computed on the same
inputs, "- looks like: <the mistake>".
"""
import copy
import re
import traceback

import numpy as np

from . import catalogue, fixtures

MATCH_FACTOR = 10  # a wrong answer "is" a known mistake when it is this close to it (x the exercise's tolerance)


def _fmt(v):
    return f"{v:.2g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _where(out, expected):
    """'max diff 0.41 at [0, 3, 17] (got 0.79, expected 1.2)'."""
    if out.ndim == 0:  # a count
        return f"got {out.item():,}, expected {expected.item():,} (off by {out.item() - expected.item():+,})"
    diff = np.abs(out.astype(np.float64) - expected.astype(np.float64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    idx = np.unravel_index(np.argmax(diff), diff.shape)
    at = "[" + ", ".join(str(int(i)) for i in idx) + "]"
    return f"max diff {_fmt(diff[idx])} at {at} (got {float(out[idx]):.6g}, expected {float(expected[idx]):.6g})"


def _close(a, b, rtol, atol):
    return a.shape == b.shape and bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol))


def _known_mistake(exercise, out, expected, args, output=None, tol=None):
    """The hint of the classic mistake whose output this is (closest first), or None.
    output: for an exercise with named outputs, the one to compare; tol: the case's (rtol, atol)."""
    rtol0, atol0 = tol or (exercise.rtol, exercise.atol)
    rtol = max(rtol0, 1e-5 if tol is None else 0) * MATCH_FACTOR
    atol = max(atol0, 1e-6 if tol is None else 0) * MATCH_FACTOR
    best = None
    for hint, wrong in exercise.mistakes:
        try:
            with np.errstate(all="ignore"):
                v = wrong(*copy.deepcopy(args))
                v = np.asarray(exercise.split(v)[output] if output else v)
        except Exception:  # this mistake cannot even run on these shapes
            continue
        if v.shape != out.shape or _close(v, expected, rtol0, atol0):
            continue
        if _close(out, v, rtol, atol):
            d = float(np.abs(out.astype(np.float64) - v).max())
            if best is None or d < best[0]:
                best = (d, hint)
    if best:
        return best[1]
    if exercise.diagnose is not None and out.shape == expected.shape:
        return exercise.diagnose(out, expected, args)
    return None


class _AxisLog(np.ndarray):
    """An array that notes every transpose of a 3-D array made from it (.T, transpose, swapaxes, np.moveaxis),
    so that a wrong token mixing can be told which axes it swapped. Used only to explain a failed answer."""
    log = []

    def _note(self, perm):
        if self.ndim == 3 and tuple(perm) != (0, 1, 2):
            _AxisLog.log.append(tuple(int(a) % 3 for a in perm))

    def transpose(self, *axes):
        if len(axes) == 1 and not isinstance(axes[0], int):
            axes = tuple(axes[0]) if axes[0] is not None else ()  # transpose((0, 2, 1)), np.transpose(a)
        self._note(axes if axes else range(self.ndim)[::-1])
        return super().transpose(*axes)

    def swapaxes(self, a, b):
        perm = list(range(self.ndim))
        if self.ndim == 3:
            perm[a], perm[b] = perm[b], perm[a]
            self._note(perm)
        return super().swapaxes(a, b)

    @property
    def T(self):
        return self.transpose()


_PERMS = {(2, 1, 0): ".T (or .transpose()) reverses all three axes, [B, N, C] -> [C, N, B]",
          (1, 0, 2): ("swapaxes(0, 1) swaps axes 0 and 1 (as transpose(1, 0, 2) does), the batch and the tokens, "
                      "[B, N, C] -> [N, B, C]"),
          (0, 2, 1): None,  # the right one: axes 1 and 2
          (2, 0, 1): "transpose(2, 0, 1) gives [C, B, N]", (1, 2, 0): "transpose(1, 2, 0) gives [N, C, B]"}


def _traced(a):
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        return a.view(_AxisLog)
    if isinstance(a, dict):
        return {k: _traced(v) for k, v in a.items()}
    return a


def transpose_hint(fn, args):
    """Run fn once more on inputs that note their transposes; a hint naming a wrong one, or None."""
    _AxisLog.log = []
    try:
        with np.errstate(all="ignore"):
            fn(*[_traced(a) for a in copy.deepcopy(args)])
    except Exception:
        pass
    wrong = [p for p in _AxisLog.log if _PERMS.get(p, "") is not None]
    _AxisLog.log = []
    if not wrong:
        return None
    what = _PERMS.get(wrong[0]) or f"transpose{wrong[0]} gives axes {wrong[0]} of [B, N, C]"
    return (f"the wrong axes transposed: {what}; token mixing transposes axes 1 and 2 only, "
            "[B, N, C] -> [B, C, N] (x.swapaxes(1, 2)), and back the same way")


def _call(fn, args):
    with np.errstate(all="ignore"):
        return fn(*copy.deepcopy(args))  # a copy: the learner's function may write into its inputs


def _error_line(e):
    """'ValueError: matmul: ... (line 12 of my_layers.py)' in one line."""
    msg = " ".join(str(e).split())
    msg = msg if len(msg) <= 140 else msg[:137] + "..."
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (line {frames[-1].lineno} of {frames[-1].filename.rsplit('/', 1)[-1]})" if frames else ""
    return f"{type(e).__name__}: {msg}{where}"


def _compare(exercise, case, out, expected, args, output=None):
    """(ok, exact, max_diff, problem, hint): problem is None when the answer is right.
    output: the name of the output compared, for an exercise with several."""
    rtol = exercise.rtol if case.rtol is None else case.rtol
    atol = exercise.atol if case.atol is None else case.atol
    tol = (rtol, atol)
    if output is not None and np.ndim(out) == 0 and not isinstance(out, np.ndarray) and np.isscalar(out):
        out = np.asarray(out)
    if not isinstance(out, np.ndarray):
        if out is None:
            return False, False, None, "returned None (a missing `return`?)", None
        if np.isscalar(out) or isinstance(out, (list, tuple)):
            return False, False, None, (f"returned a {type(out).__name__}, expected a {expected.dtype} array "
                                        f"of shape {expected.shape}"), None
        try:
            out = np.asarray(out)
        except Exception:
            return False, False, None, f"returned a {type(out).__name__}, expected a NumPy array", None
    if out.shape != expected.shape:
        problem = f"shape {tuple(out.shape)}, expected {tuple(expected.shape)}"
        hint = _known_mistake(exercise, out, expected, args, output, tol)
        if hint is None and out.size == expected.size and tuple(d for d in out.shape if d != 1) == tuple(
                d for d in expected.shape if d != 1):
            hint = catalogue.KEEPDIMS
        return False, False, None, problem, hint
    if out.dtype.kind not in "fiu":
        return False, False, None, f"dtype {out.dtype}, expected {expected.dtype}", None
    values_ok = _close(out, expected, rtol, atol)
    if values_ok and not np.isnan(out).any():
        max_diff = float(np.abs(out.astype(np.float64) - expected).max())
        if out.dtype != expected.dtype:
            if out.dtype == np.float64 and expected.dtype == np.float32:
                return False, False, max_diff, "dtype float64, expected float32", catalogue.FLOAT64
            if out.dtype == np.float32 and expected.dtype == np.float64:
                return False, False, max_diff, "dtype float32, expected float64 (the inputs' dtype)", None
            return False, False, max_diff, f"dtype {out.dtype}, expected {expected.dtype}", None
        return True, bool(np.array_equal(out, expected)), max_diff, None, None
    problem = _where(out, expected)
    if np.isnan(out).any() and not np.isnan(expected).any():
        idx = np.argwhere(np.isnan(out))[0]
        problem = f"NaN at [{', '.join(map(str, idx))}]"
    hint = _known_mistake(exercise, out, expected, args, output, tol)
    if out.dtype != expected.dtype:
        problem += f"; also dtype {out.dtype}, expected {expected.dtype}"
    return False, False, None, problem, hint


def _stub_name(e):
    """The exercise a NotImplementedError comes from: "gelu_stub: ..." or "gelu: ..." -> "gelu"."""
    m = re.match(r"(\w+?)(_stub)?:", str(e))
    return m.group(1) if m and m.group(1) in catalogue.BY_NAME else None


def verdict(name, fn, live=False):
    """(ok, the one verdict line) for the learner's fn on exercise `name`."""
    if name not in catalogue.BY_NAME:
        known = ", ".join(catalogue.BY_NAME)
        return False, f"{name}: no such exercise; the exercises are: {known}"
    exercise = catalogue.BY_NAME[name]
    store = fixtures.load()
    if exercise.named:
        return _verdict_named(exercise, fn, store, live)
    results = []  # (case, args, out)
    failure = None  # (case, problem, hint)
    exact, max_diff = True, 0.0
    for case in exercise.cases:
        args = case.args(store)
        expected = store[case.out]
        try:
            out = _call(fn, args)
        except NotImplementedError as e:
            stub = _stub_name(e)
            extra = f" ({stub} is still a stub)" if stub and stub != name else ""
            return False, f"{name}: not implemented yet{extra}"
        except Exception as e:  # the learner's bug, reported in one line
            if failure is None:
                failure = (case, "raised " + _error_line(e), None)
            continue
        ok, is_exact, diff, problem, hint = _compare(exercise, case, out, expected, args)
        if not ok:
            if failure is None:
                failure = (case, problem, hint)
            elif failure[2] is None and hint:  # an earlier case failed without a hint: this one names it
                failure = (failure[0], failure[1], hint)
            if failure[2]:
                break
            continue
        exact &= is_exact
        max_diff = max(max_diff, diff)
        results.append((case, args, out))
    if failure is not None:
        case, problem, hint = failure
        if exercise.trace_transposes:  # say which axes were swapped, when they were the wrong ones
            hint = transpose_hint(fn, case.args(store)) or hint
        if hint is None and problem.startswith("raised") and exercise.error_hint and "mismatch" in problem:
            hint = exercise.error_hint
        where = f" on the {case.name!r} case, {case.describe}" if len(exercise.cases) > 1 else ""
        return False, f"{name}: WRONG: {problem}{where}" + (f" - looks like: {hint}" if hint else "")
    line = f"{name}: " + ("exact" if exact else f"allclose (max diff {_fmt(max_diff)})")
    if not live:
        return True, line
    ok, live_line = _live(exercise, results)
    return ok, f"{line}; timm live: {live_line}"


def _joint_mistake(exercise, case, args, got, store, failing):
    """(hint, outputs it explains): the classic mistake that matches the most of the failing outputs."""
    best = (None, set())
    if not failing:
        return best
    rtol = (exercise.rtol if case.rtol is None else case.rtol) * MATCH_FACTOR
    atol = (exercise.atol if case.atol is None else case.atol) * MATCH_FACTOR
    for hint, wrong in exercise.mistakes:
        try:
            with np.errstate(all="ignore"):
                theirs = exercise.split(wrong(*copy.deepcopy(args)))
        except Exception:
            continue
        explains = set()
        for o in failing:
            mine, v, expected = np.asarray(got[o]), np.asarray(theirs[o]), store[f"{case.out}/{o}"]
            right = v.shape == expected.shape and _close(v, expected, rtol / MATCH_FACTOR, atol / MATCH_FACTOR)
            if v.shape == mine.shape and mine.dtype.kind in "fiu" and _close(mine, v, rtol, atol) and not right:
                explains.add(o)
        if len(explains) > len(best[1]):
            best = (hint, explains)
    return best


def _verdict_named(exercise, fn, store, live=False):
    """(ok, one line per named output): "linear_backward dbias: WRONG: ... - looks like: ..."."""
    name = exercise.name
    raised = None  # (case, error line)
    failed = {}  # output -> (case, problem, hint)
    stats = {o: [True, 0.0, False] for o in exercise.outputs}  # exact, max diff, checked at all
    results = []
    for case in exercise.cases:
        args = case.args(store)
        try:
            ret = _call(fn, args)
        except NotImplementedError as e:
            stub = _stub_name(e)
            extra = f" ({stub} is still a stub)" if stub and stub != name else ""
            return False, f"{name}: not implemented yet{extra}"
        except Exception as e:
            raised = raised or (case, "raised " + _error_line(e))
            continue
        try:
            got = exercise.split(ret)
        except ValueError as e:
            return False, f"{name}: WRONG: {e}"
        missing = [o for o in exercise.outputs if o not in got]
        extra = [o for o in got if o not in exercise.outputs]
        if missing or extra:
            return False, (f"{name}: WRONG: returned {', '.join(got) or 'nothing'}; expected the gradients "
                           f"{', '.join(exercise.outputs)}")
        results.append((case, args, got))
        compared = {o: _compare(exercise, case, got[o], store[f"{case.out}/{o}"], args, output=o)
                    for o in exercise.outputs}
        joint = _joint_mistake(exercise, case, args, got, store, [o for o, c in compared.items() if not c[0]])
        for o in exercise.outputs:
            ok, is_exact, diff, problem, hint = compared[o]
            if not ok and o in joint[1]:  # one mistake that explains most of the wrong gradients names them all
                hint = joint[0]
            if not ok:
                if o not in failed:
                    failed[o] = (case, problem, hint)
                elif failed[o][2] is None and hint:
                    failed[o] = (failed[o][0], failed[o][1], hint)
                continue
            stats[o][0] &= is_exact
            stats[o][1] = max(stats[o][1], diff)
            stats[o][2] = True
    lines = []
    several = len(exercise.cases) > 1
    if raised:
        case, problem = raised
        found = [f[2] for f in failed.values() if f[2]]  # a case that ran named the mistake: it explains the error
        hint = found[0] if found else exercise.error_hint if "mismatch" in problem and exercise.error_hint else None
        where = f" on the {case.name!r} case, {case.describe}" if several else ""
        lines.append(f"{name}: WRONG: {problem}{where}" + (f" - looks like: {hint}" if hint else ""))
    for o in exercise.outputs:
        if o in failed:
            case, problem, hint = failed[o]
            where = f" on the {case.name!r} case, {case.describe}" if several else ""
            lines.append(f"{name} {o}: WRONG: {problem}{where}" + (f" - looks like: {hint}" if hint else ""))
        elif stats[o][2]:
            exact, diff, _ = stats[o]
            lines.append(f"{name} {o}: " + ("exact" if exact else f"allclose (max diff {_fmt(diff)})"))
    ok = not raised and not failed
    if ok and live:
        live_ok, live_line = _live(exercise, results)
        return live_ok, "\n".join(lines) + f"\n{name}: timm live: {live_line}"
    return ok, "\n".join(lines)


def _live(exercise, results):
    """Compare the learner's outputs with timm run now on the same inputs."""
    try:
        from . import reference
        reference._torch()
    except ImportError:
        return True, "skipped (needs torch and timm: pip install timm)"
    torch_fn = getattr(reference, exercise.name)
    exact, max_diff = True, 0.0
    pairs = []
    for case, args, out in results:
        want = torch_fn(*copy.deepcopy(args))
        if exercise.named:  # every named output, one pair each
            want = exercise.split(want)
            pairs += [(case, np.asarray(out[o]), np.asarray(want[o])) for o in exercise.outputs]
        else:
            pairs.append((case, out, want))
    for case, out, want in pairs:
        rtol = exercise.rtol if case.rtol is None else case.rtol
        atol = exercise.atol if case.atol is None else case.atol
        if not _close(out, want, rtol, atol):
            return False, (f"WRONG on the {case.name!r} case: {_where(out, want)} - timm today disagrees with the "
                           "shipped fixtures; run: python tools/make_exercise_fixtures.py")
        exact &= bool(np.array_equal(out, want))
        max_diff = max(max_diff, float(np.abs(out.astype(np.float64) - want).max()))
    return True, "exact" if exact else f"allclose (max diff {_fmt(max_diff)})"


def check(name, fn, live=False):
    """Run fn on exercise `name`'s fixed inputs, print one verdict line, return True if it is right.

    live=True also compares with timm and torch run now (when they are installed).
    """
    ok, line = verdict(name, fn, live)
    print(line)
    return ok
