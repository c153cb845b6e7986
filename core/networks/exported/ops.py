"""The operators an exported graph may call, by name (no torch here: the API checks graphs without it).

A node's target is a string such as ``torch.ops.aten.linear.default``; it is accepted only when its namespace is
``aten`` or ``prims`` and its name is listed below, or when it is one of the integer operators that dynamic shapes
use (``_operator.mul`` on a batch size). Nothing is looked up by the archive's string: the builder maps accepted
names to operators itself. Left out on purpose: operators that read or write files (``aten.from_file``), return
uninitialised memory (``empty*``), reinterpret storage (``set_``, ``as_strided``), write into preallocated ``out``
tensors or call back into Python; and every other namespace (custom, quantized, distributed, higher-order ops).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.networks.exported.errors import ArchiveRejected

AFFINE = frozenset(
    {
        "linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "addmv", "mv", "einsum",
        "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    }
)  # fmt: skip
"""Operators that apply a weight linearly (x ↦ W x or a convolution), with an optional bias."""

ACTIVATIONS = frozenset(
    {
        "relu", "relu_", "relu6", "tanh", "tanh_", "sigmoid", "sigmoid_", "gelu", "gelu_", "silu", "silu_",
        "mish", "mish_", "softplus", "elu", "elu_", "selu", "selu_", "celu", "celu_", "leaky_relu", "leaky_relu_",
        "hardtanh", "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "log_sigmoid",
        "threshold",
    }
)  # fmt: skip
"""Parameter-free activations applied entry by entry (a diagonal Jacobian): what a chain may put between layers."""

_ELEMENTWISE = {
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "abs", "sign", "sgn",
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "pow", "square", "reciprocal",
    "erf", "erfinv", "sin", "cos", "tan", "atan", "atan2", "sinh", "cosh", "asinh", "floor", "ceil", "round",
    "trunc", "frac", "remainder", "fmod", "lerp", "addcmul", "addcdiv", "clamp", "clamp_", "clamp_min",
    "clamp_max", "maximum", "minimum", "where", "masked_fill", "nan_to_num", "lt", "le", "gt", "ge", "eq", "ne",
    "isnan", "isinf", "isfinite", "logical_not", "logical_and", "logical_or", "logical_xor", "xlogy",
    "softmax", "_softmax", "_safe_softmax", "log_softmax", "_log_softmax", "prelu", "_prelu_kernel", "glu",
    "log_sigmoid_forward", "dropout", "dropout_", "native_dropout", "feature_dropout", "alpha_dropout",
}  # fmt: skip
_REDUCTIONS = {
    "sum", "mean", "var", "std", "var_mean", "std_mean", "prod", "amax", "amin", "max", "min", "argmax",
    "argmin", "logsumexp", "norm", "linalg_vector_norm", "cumsum", "all", "any",
}  # fmt: skip
_SHAPES = {
    "view", "_unsafe_view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "unsqueeze",
    "squeeze", "expand", "expand_as", "contiguous", "clone", "cat", "concat", "stack", "split",
    "split_with_sizes", "chunk", "unbind", "slice", "select", "narrow", "index_select", "index", "gather",
    "repeat", "repeat_interleave", "tile", "flip", "roll", "movedim", "alias", "detach", "detach_",
    "lift_fresh_copy", "to", "_to_copy", "type_as", "pad", "constant_pad_nd", "reflection_pad1d",
    "reflection_pad2d", "replication_pad1d", "replication_pad2d", "embedding", "one_hot", "tril", "triu",
    "pixel_shuffle", "pixel_unshuffle", "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
}  # fmt: skip
_CREATION = {
    "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "arange", "scalar_tensor", "eye", "linspace",
    "new_zeros", "new_ones", "new_full", "randn", "randn_like", "rand", "rand_like", "bernoulli",
}  # fmt: skip
_NORMS_POOLS = {
    "batch_norm", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "_batch_norm_with_update", "_batch_norm_no_update", "layer_norm",
    "native_layer_norm", "group_norm", "native_group_norm", "instance_norm", "rms_norm",
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
}  # fmt: skip
_SHAPE_CHECKS = {
    "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "_assert_scalar", "_assert_tensor_metadata",
    "sym_constrain_range", "sym_constrain_range_for_size",
}  # fmt: skip

ATEN = frozenset(AFFINE | ACTIVATIONS | _ELEMENTWISE | _REDUCTIONS | _SHAPES | _CREATION | _NORMS_POOLS | _SHAPE_CHECKS)
"""Every ``aten`` operator a graph may call (any overload except ``out`` forms)."""

PRIMS = frozenset(
    {
        "convert_element_type", "broadcast_in_dim", "squeeze", "view_of", "reshape", "collapse_view",
        "sum", "add", "sub", "mul", "div", "neg", "exp", "log", "tanh", "sqrt", "rsqrt", "abs", "where",
    }
)  # fmt: skip
"""The ``prims`` operators a graph may call (what a prims decomposition of the above produces)."""

SYMBOLIC = frozenset(
    {
        "_operator.add", "_operator.sub", "_operator.mul", "_operator.floordiv", "_operator.mod", "_operator.neg",
        "_operator.truediv", "_operator.eq", "_operator.ne", "_operator.lt", "_operator.le",
        "_operator.gt", "_operator.ge", "torch.sym_max", "torch.sym_min", "torch.sym_float", "torch.sym_int",
    }
)  # fmt: skip
"""Python operators on sizes that dynamic-shape exports record (``x.size(0) * 2``); they only see integers
(``pow`` is left out: ``10 ** 10**12`` from an archive would take the process down)."""

NAMESPACES = {"aten": ATEN, "prims": PRIMS}


@dataclass(frozen=True)
class Op:
    """An accepted target: ``namespace`` ``aten``/``prims`` with ``name`` and ``overload``, or ``symbolic`` with the
    whole target as ``name`` (``_operator.mul``) and no overload."""

    namespace: str
    name: str
    overload: str

    @property
    def qualified(self) -> str:
        """``aten.linear``: how reports name the operator (overloads folded)."""
        return self.name if self.namespace == "symbolic" else f"{self.namespace}.{self.name}"


def accept(node: str, target: str) -> Op:
    """The operator ``target`` names if the allowlist holds it; otherwise a refusal naming the node and target."""
    if target in SYMBOLIC:
        return Op("symbolic", target, "")
    parts = target.split(".")
    if len(parts) == 5 and parts[:2] == ["torch", "ops"]:
        namespace, name, overload = parts[2:]
        allowed = NAMESPACES.get(namespace)
        if allowed is not None and name in allowed and overload.isidentifier() and "out" not in overload.split("_"):
            return Op(namespace, name, overload)
        if allowed is None:
            raise ArchiveRejected(
                f"graph: node {node!r} calls {target!r}, outside the aten and prims namespaces this service runs"
            )
    raise ArchiveRejected(f"graph: node {node!r} calls {target!r}, which is not on the operator allowlist")
