"""Method specs: weighting methods named on the command line, parsed safely.

A spec is a public factory of :mod:`optax_invloss` with its arguments, written as a
Python call: ``inverse_loss``, ``inverse_loss(min_weight=0.0)``,
``lr_annealing(update_every=10)``, ``softadapt(beta=0.1)``. ``equal`` is the plain
sum (weight 1 on every term). Three families can be named, so methods added to the
library are available here without a change:

- term weightings: any name in ``optax_invloss.__all__`` whose factory returns a
  ``WeightingMethod`` (:func:`factories`);
- gradient aggregators: a factory that returns an Optax transformation and takes
  ``num_terms`` (``config``, ``pcgrad(order=random)``, ``upgrad``, ``m_config``,
  ...; :func:`aggregator_factories`). The spec builds an :class:`Aggregator`:
  the runner computes the per-term gradients, the aggregator combines them and
  the preset's optimizer follows (plain SGD with the preset's learning-rate
  schedule after ``m_config``, whose authors advise against Adam after it);
- per-point weightings: a factory that returns a ``PointWeightingMethod``
  (``rba``, ``self_adaptive``; :func:`point_factories`). They train on a fixed
  pool of collocation points (see ``benchmarks/train.py``).

Specs are parsed with :mod:`ast` and never evaluated: argument values may be
numbers (with ``+ - * / **``), strings, ``True``/``False``/``None``, tuples, lists
and dicts of these, or a bare name, which stands for the public
``optax_invloss`` object of that name when there is one and for the string
otherwise (``policy=frozen`` is ``policy="frozen"``).

An L-BFGS phase after Adam is added with ``+lbfgs(...)``:
``inverse_loss+lbfgs(policy=frozen)``, ``inverse_loss+lbfgs(policy=refreshed,
refresh_every=50, iterations=1000)``, ``equal+lbfgs(policy=log)``. Its arguments are
those of :func:`optax_invloss.run_lbfgs` that the runner does not supply itself
(``iterations``, ``policy``, ``refresh_every``, ``eps``); without ``iterations``
the runner's ``--lbfgs-steps`` count is used.

Arguments a method needs from the problem are filled in when the spec does not give
them: a ``reference`` term gets the problem's residual term (its first term,
``"pde"``), and a required ``weights`` dict gets 1 for every term (or the problem's
hand-tuned weights in :data:`HAND_TUNED`); a ``weights`` dict that names only some
terms gets 1 for the others. An aggregator's ``num_terms`` is the problem's
number of terms (so that its weights are kept in the state and shown), and
``self_adaptive``'s ``init_scale`` is ``{"ic": 100.0}`` (1 for the other terms)
on a problem with an ``"ic"`` term, McClenny and Braga-Neto's initialisation.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import operator
from collections.abc import Callable
from typing import Any

import optax

import optax_invloss as oil
from benchmarks.problems import Problem

EQUAL = "equal"

#: Hand-tuned static weights per problem, used when ``static_weights`` is named
#: without weights. Poisson: the boundary weight 100 of Wang, Yu & Perdikaris
#: (about the NTK trace ratio at initialisation), their 1.63e-3 run.
HAND_TUNED: dict[str, dict[str, float]] = {"poisson": {"pde": 1.0, "bc": 100.0}}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


@dataclasses.dataclass(frozen=True)
class Aggregator:
    """A gradient aggregator as the runner uses it (what an aggregator spec builds).

    Attributes:
      transform: the library's Optax transformation (``optax_invloss.config(...)``);
        its ``update`` gets ``loss_fn=`` and computes the per-term gradients
        itself, on refresh steps only.
      name: the factory's name.
      update_every: the spec's ``update_every`` (1 unless given).
      plain_sgd: follow it by plain SGD at the preset's learning-rate schedule
        instead of the preset's optimizer (``m_config``, an optimizer with its own
        Adam-like scaling).
    """

    transform: optax.GradientTransformationExtraArgs
    name: str
    update_every: int = 1
    plain_sgd: bool = False

    @property
    def vmappable(self) -> bool:
        """Whether its seeds can run under ``jax.vmap`` without extra work.

        A refresh every K > 1 steps is a ``lax.cond`` and M-ConFIG's one term per
        step a ``lax.switch``; under ``vmap`` both become selects that run every
        branch. Those run seed by seed.
        """
        return self.update_every == 1 and self.name != "m_config"


#: Aggregators followed by plain SGD rather than the preset's optimizer.
PLAIN_SGD = frozenset({"m_config"})


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec.

    Attributes:
      text: the spec, normalised (``ast.unparse``); used as the method's label.
      name: the factory's name in ``optax_invloss``, or ``"equal"``.
      args: positional arguments of the factory.
      kwargs: keyword arguments of the factory, as given.
      lbfgs: keyword arguments of the L-BFGS phase (``+lbfgs(...)``), or None
        when the spec has none.
    """

    text: str
    name: str
    args: tuple = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    lbfgs: tuple[tuple[str, Any], ...] | None = None

    def build(
        self, problem: Problem
    ) -> oil.WeightingMethod | Aggregator | oil.PointWeightingMethod | None:
        """The method for ``problem`` (None for ``equal``).

        A term weighting or per-point method as the library builds it; an
        aggregator wrapped in an :class:`Aggregator`.
        """
        if self.name == EQUAL:
            return None
        factory = all_factories()[self.name]
        kwargs = problem_defaults(self, problem)
        try:
            built = factory(*self.args, **kwargs)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"method {self.text!r} on {problem.name}: {error}"
            ) from None
        if self.name in aggregator_factories():
            bound = inspect.signature(factory).bind(*self.args, **kwargs)
            return Aggregator(
                built,
                self.name,
                update_every=int(bound.arguments.get("update_every", 1)),
                plain_sgd=self.name in PLAIN_SGD,
            )
        return built

    @property
    def family(self) -> str:
        """``"weighting"`` (``equal`` too), ``"aggregator"`` or ``"point"``."""
        return family(self.name)


def _is_weighting_method(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.split(".")[-1] == "WeightingMethod"
    return annotation is oil.WeightingMethod


def _is_factory(obj: Any) -> bool:
    """Whether ``obj`` is a function annotated to return a ``WeightingMethod``.

    Wrappers that take a method and return another (``sharded``) are not
    factories: they cannot be named on their own.
    """
    if not inspect.isfunction(obj):
        return False
    signature = inspect.signature(obj)
    if any(_is_weighting_method(p.annotation) for p in signature.parameters.values()):
        return False
    return _is_weighting_method(signature.return_annotation)


def factories() -> dict[str, Callable[..., oil.WeightingMethod]]:
    """The public factories of ``optax_invloss`` that return a ``WeightingMethod``."""
    found = {}
    for name in oil.__all__:
        obj = getattr(oil, name)
        if _is_factory(obj):
            found[name] = obj
    return found


def _returns(obj: Any, name: str) -> bool:
    annotation = inspect.signature(obj).return_annotation
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", "")
    return annotation.split(".")[-1] == name


def aggregator_factories() -> dict[str, Callable[..., Any]]:
    """The public aggregator factories: they return an Optax transformation and
    take ``num_terms`` (wrappers of an optimizer, such as ``with_weighting``, do
    not)."""
    found = {}
    for name in oil.__all__:
        obj = getattr(oil, name)
        if (
            inspect.isfunction(obj)
            and _returns(obj, "GradientTransformationExtraArgs")
            and "num_terms" in inspect.signature(obj).parameters
        ):
            found[name] = obj
    return found


def point_factories() -> dict[str, Callable[..., oil.PointWeightingMethod]]:
    """The public factories that return a ``PointWeightingMethod``."""
    found = {}
    for name in oil.__all__:
        obj = getattr(oil, name)
        if inspect.isfunction(obj) and _returns(obj, "PointWeightingMethod"):
            found[name] = obj
    return found


def all_factories() -> dict[str, Callable[..., Any]]:
    """Every factory a spec can name: term weightings, aggregators, per-point."""
    return factories() | aggregator_factories() | point_factories()


def family(name: str) -> str:
    """The family of a spec's name: ``"weighting"``, ``"aggregator"`` or ``"point"``."""
    if name in aggregator_factories():
        return "aggregator"
    if name in point_factories():
        return "point"
    return "weighting"


#: Keyword inputs of ``update`` that make a method gradient-based: it takes the
#: parameters, or functions of them, and costs passes through the network.
GRADIENT_INPUTS = frozenset({"params", "loss_fn", "residual_fn"})


def method_inputs(method: oil.WeightingMethod) -> frozenset[str]:
    """The keyword inputs ``method.update`` uses (besides the losses and state)."""
    # The one place the benchmarks read them: the library declares them.
    return frozenset(method.inputs)


def needs_gradients(method: oil.WeightingMethod) -> bool:
    """Whether ``method`` is gradient-based (takes parameters or their functions)."""
    return bool(method_inputs(method) & GRADIENT_INPUTS)


def available() -> list[str]:
    """Every name a spec can start with."""
    return sorted([EQUAL, *all_factories()])


def _value(node: ast.AST, spec: str) -> Any:
    """The value of an argument node, for the safe subset of Python literals."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in oil.__all__:
            return getattr(oil, node.id)
        return node.id
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(node.operand, spec))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _number(node.left, spec), _number(node.right, spec)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Tuple):
        return tuple(_value(e, spec) for e in node.elts)
    if isinstance(node, ast.List):
        return [_value(e, spec) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError(f"method {spec!r}: '**' is not allowed in a spec")
        return {
            _value(k, spec): _value(v, spec)
            for k, v in zip(node.keys, node.values, strict=True)
        }
    raise ValueError(
        f"method {spec!r}: {ast.unparse(node)!r} is not a literal value (use "
        "numbers, strings, True/False/None, tuples, lists, dicts or a bare name)"
    )


def _number(node: ast.AST, spec: str) -> int | float:
    value = _value(node, spec)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"method {spec!r}: arithmetic on {ast.unparse(node)!r}, which is not "
            "a number"
        )
    return value


def _call_parts(node: ast.AST, spec: str) -> tuple[str, list, dict]:
    """``name`` or ``name(args...)`` -> (name, positional values, keyword values)."""
    if isinstance(node, ast.Name):
        return node.id, [], {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            raise ValueError(f"method {spec!r}: '*' and '**' are not allowed")
        args = [_value(a, spec) for a in node.args]
        kwargs = {k.arg: _value(k.value, spec) for k in node.keywords}
        return node.func.id, args, kwargs
    raise ValueError(
        f"method {spec!r}: write a method as name or name(arg=value, ...), "
        f"got {ast.unparse(node)!r}"
    )


#: Arguments of ``run_lbfgs`` that the training loop supplies itself (and
#: ``optimizer``, which a spec cannot spell).
_LBFGS_SUPPLIED = (
    "loss_fn",
    "params",
    "weighting_state",
    "method",
    "method_inputs",
    "optimizer",
)


def lbfgs_options() -> tuple[str, ...]:
    """The ``run_lbfgs`` arguments a spec's ``+lbfgs(...)`` may give."""
    if not hasattr(oil, "run_lbfgs"):
        return ()
    names = inspect.signature(oil.run_lbfgs).parameters
    return tuple(n for n in names if n not in _LBFGS_SUPPLIED)


def _lbfgs(node: ast.AST, spec: str) -> tuple[tuple[str, Any], ...]:
    name, args, kwargs = _call_parts(node, spec)
    if name != "lbfgs":
        raise ValueError(
            f"method {spec!r}: only an L-BFGS phase can follow '+', as "
            f"+lbfgs(policy=frozen), got {name!r}"
        )
    if not lbfgs_options():
        raise ValueError(
            f"method {spec!r}: this version of optax_invloss has no L-BFGS "
            "weighting policies (optax_invloss.run_lbfgs)"
        )
    unknown = sorted(set(kwargs) - set(lbfgs_options()))
    if args or unknown:
        raise ValueError(
            f"method {spec!r}: lbfgs takes keyword arguments among "
            f"{', '.join(lbfgs_options())}; got "
            f"{', '.join(unknown) if unknown else 'positional arguments'}"
        )
    return tuple(kwargs.items())


def _spec(node: ast.AST, spec: str) -> MethodSpec:
    lbfgs = None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        if isinstance(node.left, ast.BinOp):
            raise ValueError(f"method {spec!r}: at most one +lbfgs(...) phase")
        lbfgs = _lbfgs(node.right, spec)
        node = node.left
    name, args, kwargs = _call_parts(node, spec)
    names = all_factories()
    if name != EQUAL and name not in names:
        raise ValueError(
            f"unknown method {name!r} in {spec!r}; available: {', '.join(available())}"
        )
    if name == EQUAL:
        if args or kwargs:
            raise ValueError(f"method {spec!r}: 'equal' takes no arguments")
    else:
        try:
            inspect.signature(names[name]).bind_partial(*args, **kwargs)
        except TypeError as error:
            signature = inspect.signature(names[name])
            raise ValueError(
                f"method {spec!r}: {error}; the signature is {name}{_plain(signature)}"
            ) from None
    text = ast.unparse(node)
    if lbfgs is not None:
        text += "+lbfgs" + (
            f"({', '.join(f'{k}={v!r}' for k, v in lbfgs)})" if lbfgs else ""
        )
    return MethodSpec(
        text=text,
        name=name,
        args=tuple(args),
        kwargs=tuple(kwargs.items()),
        lbfgs=lbfgs,
    )


def _plain(signature: inspect.Signature) -> str:
    """``(a, b=1.0, *, c=None)`` without the annotations."""
    parameters = [
        p.replace(annotation=inspect.Parameter.empty)
        for p in signature.parameters.values()
    ]
    return str(inspect.Signature(parameters))


def _parse(text: str, what: str) -> ast.AST:
    try:
        return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ValueError(
            f"cannot parse {what} {text!r}: {error.msg}; write name or "
            "name(arg=value, ...), e.g. inverse_loss(min_weight=0.0)"
        ) from None


def parse_method(text: str) -> MethodSpec:
    """Parses one spec, e.g. ``"inverse_loss(min_weight=0.0)"``.

    Raises:
      ValueError: for a syntax error, a value that is not a literal, an unknown
        method (the message lists the available ones) or arguments the factory
        does not take.
    """
    return _spec(_parse(text, "method"), text)


def parse_methods(text: str) -> list[MethodSpec]:
    """Parses a comma-separated list of specs (commas inside calls are fine)."""
    node = _parse(f"[{text}]", "methods")
    if not isinstance(node, ast.List) or not node.elts:
        raise ValueError(f"no methods in {text!r}")
    specs = [_spec(element, ast.unparse(element)) for element in node.elts]
    texts = [s.text for s in specs]
    duplicates = sorted({t for t in texts if texts.count(t) > 1})
    if duplicates:
        raise ValueError(f"methods named twice: {', '.join(duplicates)}")
    return specs


def problem_defaults(spec: MethodSpec, problem: Problem) -> dict[str, Any]:
    """The spec's keyword arguments, completed with what the problem implies."""
    kwargs = dict(spec.kwargs)
    parameters = inspect.signature(all_factories()[spec.name]).parameters
    bound = inspect.signature(all_factories()[spec.name]).bind_partial(*spec.args)
    given = set(kwargs) | set(bound.arguments)
    terms = problem.term_names
    if spec.family == "aggregator" and "num_terms" not in given:
        kwargs["num_terms"] = len(terms)
    if spec.name == "self_adaptive" and not {"init_scale", "terms"} & given:
        if "ic" in terms:
            kwargs["init_scale"] = {"ic": 100.0}
    if "reference" in parameters and "reference" not in given:
        kwargs["reference"] = terms[0]
    if "weights" in parameters:
        if "weights" not in given:
            if parameters["weights"].default is inspect.Parameter.empty:
                kwargs["weights"] = dict(
                    HAND_TUNED.get(problem.name, {t: 1.0 for t in terms})
                )
        elif isinstance(kwargs.get("weights"), dict):
            kwargs["weights"] = {t: 1.0 for t in terms} | kwargs["weights"]
    return kwargs
