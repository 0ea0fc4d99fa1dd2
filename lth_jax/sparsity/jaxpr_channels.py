"""Which axes of a traced program must keep the same channels: union-find over the axes of its values.

A jaxpr is first flattened into one list of first-order equations (`Program`): the bodies of `jit`,
`custom_jvp_call`, `custom_vjp_call` and `remat` are inlined, each call site with fresh value ids, so
Flax's modules and lth_jax's own convolutions read as plain `conv_general_dilated`, `dot_general`, ...

Every axis of every value is a node. An equation ties two nodes when index i of one is index i of the
other -- an elementwise operand's axis and the result's, the contracted axes of a `dot_general`, a
convolution's input features and its kernel's -- and `ChannelGraph` unions them. Axes that are not
index-for-index the same are described by structure instead: a reshape's merged axis is the product of
the axes it merges (row-major; a flatten into a Dense layer), a concatenation's axis the sum of its
operands' (each at its offset), a grouped convolution's features the product (groups, features per group).

A node is *pinned* (its channels can not be removed) when it is an axis of the function's inputs other
than the params, of its outputs (except an output that is a new value of an input, `ChannelGraph`'s
`updated`: its axes are that input's) or of a constant; when an operation mixes positions along it (a
reduction over it, a convolution's spatial axes, a slice of part of it); or when the equation is one
this module has no rule for -- unknown operations are never narrowed. Pinning a product or sum pins its
parts. The prunable channel groups are the unpinned components without structure that hold an axis of
a parameter leaf.
"""

import dataclasses
import math

import jax.extend.core as jex
import numpy as np

# Bodies that run exactly once per call with the call's operands: inlined. Name -> its param holding the body.
INLINED = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
           "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
           "remat": "jaxpr", "checkpoint": "jaxpr"}

# Position i of every operand (of the result's shape, or broadcast along axes of size 1) is position i of
# the result.
ELEMENTWISE = frozenset("""
    abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type copy
    copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le
    lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real reduce_precision rem round
    rsqrt select_n sign sin sinh sqrt square sub tan tanh xor""".split())
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax "
                       "argmin".split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
WINDOWED = frozenset("reduce_window_sum reduce_window_max reduce_window_min".split())


@dataclasses.dataclass
class Eqn:
  """One first-order equation; operands are value ids or `jex.Literal`s."""
  primitive: jex.Primitive
  params: dict
  invars: list
  outvars: list[int]


@dataclasses.dataclass
class Program:
  """A jaxpr with every call inlined: value ids 0..n-1, their shapes, the constants among them."""
  shapes: list = dataclasses.field(default_factory=list)
  consts: dict = dataclasses.field(default_factory=dict)
  eqns: list = dataclasses.field(default_factory=list)
  inputs: list = dataclasses.field(default_factory=list)
  outputs: list = dataclasses.field(default_factory=list)

  def new(self, aval) -> int:
    """Adds a value of `aval`'s shape; returns its number."""
    self.shapes.append(tuple(getattr(aval, "shape", ())))
    return len(self.shapes) - 1


def flatten(closed: jex.ClosedJaxpr) -> Program:
  """The Program of a closed jaxpr (what `jax.make_jaxpr` returns)."""
  prog = Program()
  env = {}
  for v in closed.jaxpr.invars:
    env[v] = prog.new(v.aval)
  prog.inputs = [env[v] for v in closed.jaxpr.invars]
  prog.outputs = _inline(prog, closed.jaxpr, closed.consts, env)
  return prog


def _read(env, v):
  return v if isinstance(v, jex.Literal) else env[v]


def _inline(prog: Program, jaxpr: jex.Jaxpr, consts, env: dict) -> list:
  for v, c in zip(jaxpr.constvars, consts):
    env[v] = prog.new(v.aval)
    prog.consts[env[v]] = c
  for eqn in jaxpr.eqns:
    ins = [_read(env, v) for v in eqn.invars]
    body = eqn.params.get(INLINED.get(eqn.primitive.name, ""))
    if body is not None:
      inner_jaxpr, inner_consts = (body.jaxpr, body.consts) if hasattr(body, "consts") else (body, ())
      outs = _inline(prog, inner_jaxpr, inner_consts, dict(zip(inner_jaxpr.invars, ins)))
    else:
      outs = [prog.new(v.aval) for v in eqn.outvars]
      prog.eqns.append(Eqn(eqn.primitive, dict(eqn.params), ins, outs))
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [_read(env, v) for v in jaxpr.outvars]


class ChannelGraph:
  """Union-find over the axes of a Program's values, with products / sums for reshapes and concatenations.

  `updated` maps an output's position in `prog.outputs` to the input value it is the new value of (a
  BatchNorm's running statistics in training): that output is not pinned, its axes are the input's.
  """

  def __init__(self, prog: Program, updated: dict[int, int] | None = None):
    self.prog = prog
    self.offset = np.cumsum([0] + [len(s) for s in prog.shapes]).tolist()
    self.parent = list(range(self.offset[-1]))
    self.size = [d for s in prog.shapes for d in s]
    self.structure = {}   # root -> ("prod" | "sum", [nodes]) in row-major / offset order
    self.pinned = set()
    updated = updated or {}
    for v in (*prog.consts, *(v for i, v in enumerate(prog.outputs) if i not in updated)):
      self.pin_value(v)
    for eqn in prog.eqns:
      self._tie(eqn)
    for i, old in updated.items():
      new = prog.outputs[i]
      if isinstance(new, jex.Literal) or prog.shapes[new] != prog.shapes[old]:
        self.pin_value(new)
        self.pin_value(old)
      else:
        for a in range(len(prog.shapes[old])):
          self.union(self.node(new, a), self.node(old, a))

  # --- union-find ---------------------------------------------------------------------------------
  def node(self, value: int, axis: int) -> int:
    """The union-find node of `value`'s axis `axis`."""
    return self.offset[value] + axis

  def virtual(self, size: int) -> int:
    """A new node of `size` channels that is no value's axis (a reshape's merged axis, a grouped axis' factor)."""
    self.parent.append(len(self.parent))
    self.size.append(size)
    return len(self.parent) - 1

  def find(self, n: int) -> int:
    """The representative of node `n`'s set (with path halving)."""
    while self.parent[n] != n:
      self.parent[n] = self.parent[self.parent[n]]
      n = self.parent[n]
    return n

  def union(self, a: int, b: int) -> None:
    """Ties nodes `a` and `b`: their channels are pruned together."""
    a, b = self.find(a), self.find(b)
    if a == b:
      return
    if self.size[a] != self.size[b]:
      self.pinned.update((a, b))
      return
    sa, sb = self.structure.pop(a, None), self.structure.pop(b, None)
    self.parent[b] = a
    if sa and sb:
      self._merge(a, sa, sb)
    elif sa or sb:
      self.structure[a] = sa or sb

  def compose(self, whole: int, kind: str, parts: list[int]) -> None:
    """`whole` is the product (row-major) or sum (in order) of `parts`; size-1 factors carry nothing."""
    if kind == "prod":
      parts = [p for p in parts if self.size[p] != 1]
    if len(parts) == 1:
      self.union(whole, parts[0])
    elif parts:
      r = self.find(whole)
      old = self.structure.pop(r, None)
      self.structure[r] = (kind, parts)
      if old:
        self._merge(r, (kind, parts), old)

  def _merge(self, root, mine, other):
    """`root` has two descriptions: the same parts are the same axes; different ones pin both."""
    self.structure[root] = mine
    if mine[0] == other[0] and [self.size[p] for p in mine[1]] == [self.size[p] for p in other[1]]:
      for p, q in zip(mine[1], other[1]):
        self.union(p, q)
    else:
      self.pinned.update([root, *other[1]])

  def pin_value(self, v) -> None:
    """Pins every axis of value `v`: none of its channels may be pruned."""
    if not isinstance(v, jex.Literal):
      self.pinned.update(self.node(v, a) for a in range(len(self.prog.shapes[v])))

  # --- the rules, one per kind of equation ----------------------------------------------------------
  def _tie(self, eqn: Eqn) -> None:
    name = eqn.primitive.name
    shapes = self.prog.shapes
    ins = [v for v in eqn.invars if not isinstance(v, jex.Literal)]
    out = eqn.outvars[0] if eqn.outvars else None
    n = self.node
    if name in ELEMENTWISE and len(eqn.outvars) == 1:
      for v in ins:
        if len(shapes[v]) == len(shapes[out]):  # rank 0 operands are scalars, broadcast whole
          for a, (d, e) in enumerate(zip(shapes[v], shapes[out])):
            if d == e:
              self.union(n(v, a), n(out, a))
    elif name == "broadcast_in_dim":
      x = eqn.invars[0]
      for a, b in enumerate(eqn.params["broadcast_dimensions"]):
        if shapes[x][a] == shapes[out][b]:
          self.union(n(x, a), n(out, b))
    elif name == "reshape" and eqn.params.get("dimensions") is None:
      self._reshape(eqn.invars[0], out)
    elif name == "transpose":
      for b, a in enumerate(eqn.params["permutation"]):
        self.union(n(eqn.invars[0], a), n(out, b))
    elif name == "squeeze":
      x = eqn.invars[0]
      dropped = {d % len(shapes[x]) for d in eqn.params["dimensions"]}
      for b, a in enumerate(a for a in range(len(shapes[x])) if a not in dropped):
        self.union(n(x, a), n(out, b))
    elif name == "concatenate":
      self._along(eqn.params["dimension"], eqn.invars, [out], kind_of_whole="out")
    elif name == "split":
      self._along(eqn.params["axis"], eqn.outvars, eqn.invars[:1], kind_of_whole="in")
    elif name in REDUCTIONS:
      x, axes = eqn.invars[0], set(eqn.params["axes"])
      kept = [a for a in range(len(shapes[x])) if a not in axes]
      for b, a in enumerate(kept):
        self.union(n(x, a), n(out, b))
      self.pinned.update(n(x, a) for a in axes)
    elif name in CUMULATIVE or name == "rev":
      mixed = {eqn.params["axis"]} if name in CUMULATIVE else set(eqn.params["dimensions"])
      self._positionwise(eqn.invars[0], out, lambda a: a not in mixed)
    elif name in WINDOWED:
      p = eqn.params
      trivial = lambda a: (p["window_dimensions"][a] == 1 and p["window_strides"][a] == 1
                           and tuple(p["padding"][a]) == (0, 0) and p["base_dilation"][a] == 1
                           and p["window_dilation"][a] == 1)
      self._positionwise(eqn.invars[0], out, trivial)
    elif name == "slice":
      p, x = eqn.params, eqn.invars[0]
      whole = lambda a: (p["start_indices"][a] == 0 and p["limit_indices"][a] == shapes[x][a]
                         and (p["strides"] is None or p["strides"][a] == 1))
      self._positionwise(x, out, whole)
    elif name == "pad":
      cfg = eqn.params["padding_config"]
      self._positionwise(eqn.invars[0], out, lambda a: tuple(cfg[a]) == (0, 0, 0))
    elif name == "dot_general":
      self._dot_general(eqn)
    elif name == "conv_general_dilated":
      self._conv(eqn)
    else:  # no rule: nothing that meets it may change shape
      for v in (*ins, *eqn.outvars):
        self.pin_value(v)

  def _positionwise(self, x, out, same) -> None:
    """Axes where `same(axis)` keep their positions; the others are mixed, so pinned."""
    for a in range(len(self.prog.shapes[x])):
      if same(a):
        self.union(self.node(x, a), self.node(out, a))
      else:
        self.pinned.update((self.node(x, a), self.node(out, a)))

  def _along(self, axis, parts, whole, kind_of_whole) -> None:
    """Concatenate / split: the whole's `axis` is the sum of the parts'; the other axes are shared."""
    (w,) = whole
    for a in range(len(self.prog.shapes[w])):
      if a == axis:
        self.compose(self.node(w, a), "sum", [self.node(p, a) for p in parts])
      else:
        for p in parts:
          self.union(self.node(p, a), self.node(w, a))

  def _reshape(self, x, out) -> None:
    """Match runs of axes with equal products; a run of several on one side is their row-major product."""
    sx, so = self.prog.shapes[x], self.prog.shapes[out]
    ins = [a for a, d in enumerate(sx) if d != 1]
    outs = [a for a, d in enumerate(so) if d != 1]
    i = j = 0
    while i < len(ins) and j < len(outs):
      run_in, run_out = [ins[i]], [outs[j]]
      p_in, p_out = sx[ins[i]], so[outs[j]]
      i, j = i + 1, j + 1
      while p_in != p_out:
        if p_in < p_out:
          run_in.append(ins[i])
          p_in, i = p_in * sx[ins[i]], i + 1
        else:
          run_out.append(outs[j])
          p_out, j = p_out * so[outs[j]], j + 1
      merged = self.virtual(p_in)
      self.compose(merged, "prod", [self.node(x, a) for a in run_in])
      self.compose(merged, "prod", [self.node(out, a) for a in run_out])

  def _dot_general(self, eqn) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    out, n, shapes = eqn.outvars[0], self.node, self.prog.shapes
    for a, b in zip(lc, rc):
      self.union(n(lhs, a), n(rhs, b))
    for k, (a, b) in enumerate(zip(lb, rb)):
      self.union(n(lhs, a), n(out, k))
      self.union(n(rhs, b), n(out, k))
    k = len(lb)
    for v, used in ((lhs, (*lc, *lb)), (rhs, (*rc, *rb))):
      for a in range(len(shapes[v])):
        if a not in used:
          self.union(n(v, a), n(out, k))
          k += 1

  def _conv(self, eqn) -> None:
    """Batch to batch; grouped features as (group, feature in group); spatial axes mix, so pinned."""
    lhs, rhs = eqn.invars
    out, n, p = eqn.outvars[0], self.node, eqn.params
    dn = p["dimension_numbers"]
    if p["batch_group_count"] != 1:
      for v in (lhs, rhs, out):
        self.pin_value(v)
      return
    self.union(n(lhs, dn.lhs_spec[0]), n(out, dn.out_spec[0]))
    self.pinned.update([*(n(lhs, a) for a in dn.lhs_spec[2:]), *(n(rhs, a) for a in dn.rhs_spec[2:]),
                        *(n(out, a) for a in dn.out_spec[2:])])
    feat_in, feat_out = n(lhs, dn.lhs_spec[1]), n(out, dn.out_spec[1])
    kernel_in, kernel_out = n(rhs, dn.rhs_spec[1]), n(rhs, dn.rhs_spec[0])
    self.union(feat_out, kernel_out)
    groups = p["feature_group_count"]
    if groups == 1:
      self.union(feat_in, kernel_in)
      return
    group = self.virtual(groups)
    self.compose(feat_in, "prod", [group, kernel_in])
    self.compose(feat_out, "prod", [group, self.virtual(self.size[feat_out] // groups)])

  # --- reading the result ---------------------------------------------------------------------------
  def pinned_roots(self) -> set[int]:
    """Roots of pinned nodes, and every part of a pinned product or sum."""
    todo = [self.find(p) for p in self.pinned]
    seen = set()
    while todo:
      r = todo.pop()
      if r not in seen:
        seen.add(r)
        todo += [self.find(c) for c in self.structure.get(r, ("", []))[1]]
    return seen

  def columns(self, node: int, depth: int = 0) -> list[tuple[int, np.ndarray]]:
    """[(channel root, which channel each position of the axis is, -1 where none)] for `node`'s axis."""
    r, size = self.find(node), self.size[node]
    if r not in self.structure or depth > 64:
      return [(r, np.arange(size))]
    kind, parts = self.structure[r]
    sizes = [self.size[c] for c in parts]
    out = []
    if kind == "prod":
      coords = np.unravel_index(np.arange(size), sizes)
      for c, coord in zip(parts, coords):
        out += [(root, idx[coord]) for root, idx in self.columns(c, depth + 1)]
    else:
      for c, start in zip(parts, np.cumsum([0] + sizes[:-1])):
        for root, idx in self.columns(c, depth + 1):
          full = np.full(size, -1)
          full[start:start + len(idx)] = idx
          out.append((root, full))
    return out

  def narrow_size(self, node: int, kept: dict[int, int]) -> int:
    """The length of `node`'s axis once channel root r keeps kept[r] channels."""
    r = self.find(node)
    if r in self.structure:
      kind, parts = self.structure[r]
      sizes = [self.narrow_size(c, kept) for c in parts]
      return math.prod(sizes) if kind == "prod" else sum(sizes)
    return kept.get(r, self.size[r])
