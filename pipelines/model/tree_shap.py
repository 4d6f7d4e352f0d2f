"""Per-row SHAP contributions computed from the trees of the ONNX file itself: exact
path-dependent TreeSHAP (Lundberg et al. 2020, "From local explanations to global understanding
with explainable AI for trees", Algorithm 2) in numpy, without shap and without the pickled model.

The ONNX tree operators hold every split and leaf but not how many training rows reached each
node (the covers path-dependent TreeSHAP weighs by). `record` writes them, with the model input
each encoded column comes from, into the ONNX file's own metadata at export (training), so the
file's sha256, checked on every load, covers them too. The values are in the space of the tree
operator's output: the log-odds score its Sigmoid turns into the probability (gradient boosting),
or the probability itself (a forest); they add up to it exactly, up to float rounding.

Vectorised over rows: a leaf's contribution to feature j is
`v * (o_j - z_j) * sum_s c_s * s!(d-1-s)!/d!` with `c_s` the coefficients of
`prod_{k != j} (z_k + o_k t)` over the d distinct features on its path (z: the cover fraction of
the path's branches on the feature, o: whether the row follows them all), which is what
Algorithm 2's EXTEND and UNWIND compute one row at a time; leaves with the same d are done
together, one numpy array per coefficient. As o is 0 or 1, a leaf with few path features (d <= 8)
has only 2^d possible contributions per feature: they are computed once when the model is loaded
and looked up per row.
"""

from __future__ import annotations

import json
from math import factorial
from typing import Any

import numpy as np

from pipelines.model.onnx_model import OnnxScorer

METADATA_KEY = "mlops.tree_shap"  # ONNX metadata_props: {"owners": [...], "covers": [[...]]}
TREE_OPS = ("TreeEnsembleRegressor", "TreeEnsembleClassifier")
# |base + sum(contributions) - the tree operator's output| allowed, in its space: onnxruntime
# adds the float32 leaf values in float32, TreeSHAP in float64 (measured: about 1e-6)
ADDITIVITY_TOLERANCE = 1e-5
# Rows explained together, and leaves x rows per pass: small enough for the arrays to stay in
# the CPU cache (the fastest of those measured on this project's model)
ROWS_PER_PASS = 2048
WORK_ELEMENTS = 1 << 17
# Leaves with at most this many distinct features on their path get a table of their
# contributions for each of the 2^d patterns of followed branches (built once per model: at most
# d * 2^d = 384 floats a leaf), looked up per row; deeper ones are computed per row.
TABLE_MAX_FEATURES = 6


def tree_node(graph: Any) -> Any | None:
    """The graph's one tree-ensemble operator (ai.onnx.ml), or None."""
    found = [n for n in graph.node if n.op_type in TREE_OPS and n.domain == "ai.onnx.ml"]
    if len(found) > 1:
        raise ValueError(f"{len(found)} tree-ensemble operators in the graph; TreeSHAP over the "
                         f"ONNX trees expects one")
    return found[0] if found else None


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def record(model: Any, pipeline: Any, numeric: list[str], categorical: list[str]) -> None:
    """Write the fitted estimator's node covers and the input of each encoded column into the
    ONNX model's metadata (in place); nothing for a model without trees or a pipeline not shaped
    as `training.make_pipeline` makes it (steps `prep` and `model`). Raises if the ONNX trees
    are not the estimator's trees node for node (the covers would then be meaningless)."""
    from pipelines.model.explain import encoded_owners

    node = tree_node(model.graph)
    steps = getattr(pipeline, "named_steps", {})
    estimators = getattr(steps.get("model"), "estimators_", None)
    if node is None or estimators is None or "prep" not in steps:
        return
    trees = list(np.asarray(estimators, dtype=object).ravel())
    if not all(hasattr(t, "tree_") for t in trees):
        return
    a = _attrs(node)
    tree_ids, node_ids = np.asarray(a["nodes_treeids"]), np.asarray(a["nodes_nodeids"])
    features, modes = np.asarray(a["nodes_featureids"]), np.asarray(a["nodes_modes"])
    for t, est in enumerate(trees):
        mine = tree_ids == t
        ids, tree = node_ids[mine], est.tree_
        split = tree.children_left >= 0
        if (len(ids) != tree.node_count or ids.max() != tree.node_count - 1
                or not np.array_equal((modes[mine] != b"LEAF")[np.argsort(ids)], split)
                or not np.array_equal(features[mine][np.argsort(ids)][split],
                                      tree.feature[split])):
            raise ValueError(f"ONNX tree {t} is not the estimator's tree {t} node for node; "
                             f"cannot record its covers for TreeSHAP")
    meta = {"owners": encoded_owners(pipeline.named_steps["prep"], numeric, categorical),
            "covers": [t.tree_.weighted_n_node_samples.tolist() for t in trees]}
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, separators=(",", ":"))


_COMPARE = {b"BRANCH_LEQ": np.less_equal, b"BRANCH_LT": np.less,
            b"BRANCH_GTE": np.greater_equal, b"BRANCH_GT": np.greater,
            b"BRANCH_EQ": np.equal, b"BRANCH_NEQ": np.not_equal}


class TreeShap:
    """Path-dependent TreeSHAP over the trees of an ONNX model (see the module docstring).

    `inputs`: the model inputs contributions are given for (one-hot columns summed into their
    categorical); `encoded`: the name of the tensor the trees read; `raw`: the tensor (and
    column) the contributions add up to; `space`: what that tensor is; `base_value`.
    """

    def __init__(self, model: Any) -> None:
        node = tree_node(model.graph)
        meta = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
        if node is None or meta is None:
            what = "no tree-ensemble operator" if node is None else "no recorded node covers"
            raise ValueError(f"the ONNX file has {what}: TreeSHAP needs a tree model exported "
                             f"by this project's training (covers are recorded at export)")
        recorded = json.loads(meta)
        a = _attrs(node)
        self.encoded, self.space, leaf_values, base = node.input[0], *self._outputs(model, node, a)
        owners = recorded["owners"]
        self.inputs = list(dict.fromkeys(owners))
        self.owner = np.array([self.inputs.index(o) for o in owners])
        # internal nodes, globally numbered; leaves with their path
        tree_ids, node_ids = np.asarray(a["nodes_treeids"]), np.asarray(a["nodes_nodeids"])
        index = {(int(t), int(n)): i for i, (t, n) in enumerate(zip(tree_ids, node_ids))}
        modes = list(a["nodes_modes"])
        split_of = {i: k for k, i in enumerate(i for i, m in enumerate(modes) if m != b"LEAF")}
        self.feature = np.array([a["nodes_featureids"][i] for i in split_of], dtype=np.int64)
        self.threshold = np.array([a["nodes_values"][i] for i in split_of], dtype=np.float32)
        self.mode = [modes[i] for i in split_of]
        tracks = a.get("nodes_missing_value_tracks_true") or [0] * len(modes)
        self.nan_true = np.array([bool(tracks[i]) for i in split_of])
        unknown = set(self.mode) - set(_COMPARE)
        if unknown:
            raise ValueError(f"unsupported tree split modes {sorted(unknown)}")
        covers = recorded["covers"]
        self.base_value = float(base)
        leaves: list[tuple[float, dict[int, tuple[float, list[int]]]]] = []
        for t, tree_covers in enumerate(covers):
            stack = [(index[(t, 0)], 1.0, {})]  # node, weight of reaching it, path by feature
            while stack:
                i, weight, path = stack.pop()
                nid = int(node_ids[i])
                if modes[i] == b"LEAF":
                    value = leaf_values.get((t, nid), 0.0)
                    self.base_value += weight * value
                    leaves.append((value, path))
                    continue
                k, f = split_of[i], int(a["nodes_featureids"][i])
                for child, literal in ((a["nodes_truenodeids"][i], k),
                                       (a["nodes_falsenodeids"][i], k + len(split_of))):
                    ratio = tree_covers[child] / tree_covers[nid] if tree_covers[nid] else 0.0
                    z, lits = path.get(f, (1.0, []))
                    stack.append((index[(t, int(child))], weight * ratio,
                                  {**path, f: (z * ratio, [*lits, literal])}))
        self._groups(leaves, len(split_of))

    def _outputs(self, model: Any, node: Any, a: dict[str, Any]
                 ) -> tuple[str, dict[tuple[int, int], float], float]:
        """(space, leaf value of the positive class by (tree, node), base value); sets the
        output tensor (and its column) the contributions add up to."""
        if node.op_type == "TreeEnsembleRegressor":
            consumers = [n.op_type for n in model.graph.node if node.output[0] in n.input]
            if (a.get("n_targets", 1) != 1 or a.get("post_transform", b"NONE") != b"NONE"
                    or "Sigmoid" not in consumers):
                raise ValueError("a tree regressor that is not a binary classifier's log-odds "
                                 "score: no TreeSHAP space to state")
            self.raw, self.raw_column = node.output[0], 0
            keys = zip(a["target_treeids"], a["target_nodeids"], a["target_weights"])
            values: dict[tuple[int, int], float] = {}
            for t, n, w in keys:
                values[(t, n)] = values.get((t, n), 0.0) + float(w)
            return "log-odds", values, float((a.get("base_values") or [0.0])[0])
        labels = a.get("classlabels_int64s") or a.get("classlabels_strings") or []
        ids = set(a["class_ids"])
        if len(labels) != 2 or a.get("post_transform", b"NONE") != b"NONE" or ids - {0, 1}:
            raise ValueError("TreeSHAP over ONNX trees supports a binary classifier's log-odds "
                             "(gradient boosting) or probability (forest) only")
        positive = 1 if 1 in ids else 0  # one weight per leaf: onnxruntime's positive class
        self.raw, self.raw_column = node.output[1], 1
        values = {}
        for t, n, c, w in zip(a["class_treeids"], a["class_nodeids"], a["class_ids"],
                              a["class_weights"]):
            if c == positive:
                values[(t, n)] = values.get((t, n), 0.0) + float(w)
        base = a.get("base_values") or [0.0, 0.0]
        return "probability", values, float(base[positive if len(base) > 1 else 0])

    def _groups(self, leaves: list[tuple[float, dict[int, tuple[float, list[int]]]]],
                n_splits: int) -> None:
        """Leaves by the number d of distinct features on their path, as arrays; for small d,
        the contributions of every pattern of followed branches, tabulated."""
        self.groups = []
        self.n_splits = n_splits
        for d in sorted({len(p) for _, p in leaves} - {0}):
            mine = [(v, p) for v, p in leaves if len(p) == d]
            depth = max(len(lits) for _, p in mine for _, lits in p.values())
            literals = np.full((len(mine), d, depth), 2 * n_splits, dtype=np.int64)  # pad: true
            z = np.empty((len(mine), d))
            owner = np.empty((len(mine), d), dtype=np.intp)  # the model input of each feature
            for li, (_, path) in enumerate(mine):
                for j, (f, (zf, lits)) in enumerate(sorted(path.items())):
                    literals[li, j, :len(lits)] = lits
                    z[li, j], owner[li, j] = zf, self.owner[f]
            values = np.array([v for v, _ in mine])
            table = None
            if d <= TABLE_MAX_FEATURES:
                bits = (np.arange(2 ** d)[None, :] >> np.arange(d)[:, None]) & 1  # (d, 2^d)
                table = _shares(values, z, np.broadcast_to(bits, (len(mine), d, 2 ** d)))
            self.groups.append((literals, owner, values, z, table))

    def decisions(self, x: np.ndarray) -> np.ndarray:
        """(2 * splits + 1, rows) booleans: row goes to the true branch of split k (row k), to
        its false branch (row splits + k), and an always-true row for padding."""
        cols = np.ascontiguousarray(x.T)[self.feature]  # (splits, rows)
        out = np.empty((2 * self.n_splits + 1, len(x)), dtype=bool)
        true = out[:self.n_splits]
        modes = set(self.mode)
        for mode in modes:
            if len(modes) == 1:
                _COMPARE[mode](cols, self.threshold[:, None], out=true)
            else:
                sel = np.array([m == mode for m in self.mode])
                true[sel] = _COMPARE[mode](cols[sel], self.threshold[sel, None])
        if np.isnan(x).any():
            missing = np.isnan(cols)
            true[:] = np.where(missing, self.nan_true[:, None], true)
        np.logical_not(true, out=out[self.n_splits:2 * self.n_splits])
        out[-1] = True
        return out

    def values(self, x: np.ndarray) -> np.ndarray:
        """Contributions (rows, inputs) of the rows `x` of the encoded tensor the trees read
        (float32, as onnxruntime gives it); each row sums to its raw output - base_value."""
        x = np.asarray(x, dtype=np.float32)
        if len(x) > ROWS_PER_PASS:
            return np.concatenate([self.values(x[r:r + ROWS_PER_PASS])
                                   for r in range(0, len(x), ROWS_PER_PASS)])
        out = np.zeros((len(x), len(self.inputs)))
        lit = self.decisions(x)
        step = max(1, WORK_ELEMENTS // max(1, len(x)))
        for literals, owner, values, z, table in self.groups:
            for lo in range(0, len(literals), step):
                sl = slice(lo, lo + step)
                followed = lit[literals[sl]].all(axis=2)  # (leaves, d, rows)
                n, d = followed.shape[:2]
                if table is None:
                    shares = _shares(values[sl], z[sl], followed.astype(np.float64))
                else:
                    patterns = table.shape[2]
                    entry = np.repeat((np.arange(n) * patterns)[:, None], len(x), axis=1)
                    for k in range(d):  # the entry of the leaf's table for the branches followed
                        entry |= followed[:, k].astype(np.intp) << k
                    shares = [np.take(table[j, sl].reshape(-1), entry) for j in range(d)]
                for j in range(d):  # each path feature's share into its model input
                    hot = np.zeros((n, len(self.inputs)))
                    hot[np.arange(n), owner[sl, j]] = 1.0
                    out += shares[j].T @ hot
        return out


def _shares(v: np.ndarray, z: np.ndarray, o: np.ndarray) -> np.ndarray:
    """(d, leaves, columns): each leaf's contribution to its j-th path feature, where a column
    follows the path's branches on feature k iff `o[leaf, k, column]` (z: their cover
    fractions, v: the leaf values). Algorithm 2's EXTEND (a product of linear polynomials) and
    UNWIND (dividing one factor out) on coefficient arrays."""
    n_leaves, d, columns = o.shape
    weights = [factorial(s) * factorial(d - 1 - s) / factorial(d) for s in range(d)]
    p = [np.ones((n_leaves, columns))] + [np.zeros((n_leaves, columns)) for _ in range(d)]
    for k in range(d):  # p(t) = prod_k (z_k + o_k t), coefficients by degree
        zk, ok = z[:, k, None], o[:, k]
        for s in range(k + 1, 0, -1):
            p[s] = zk * p[s] + ok * p[s - 1]
        p[0] = zk * p[0]
    out = np.empty((d, n_leaves, columns))
    for j in range(d):
        zj, oj = z[:, j, None], o[:, j]
        # p(t) / (z_j + o_j t): synthetic division by (t + z_j) where o_j = 1, else by z_j
        total_one, q = np.zeros((n_leaves, columns)), p[d]
        for s in range(d - 1, -1, -1):
            total_one += weights[s] * q
            q = p[s] - zj * q
        total_zero = sum(weights[s] * p[s] for s in range(d))
        total_zero = np.divide(total_zero, zj, out=np.zeros((n_leaves, columns)), where=zj > 0)
        out[j] = v[:, None] * (oj - zj) * np.where(oj > 0, total_one, total_zero)
    return out


class ExplainingScorer(OnnxScorer):
    """An `OnnxScorer` whose session also returns the encoded tensor the trees read and their
    raw output, and explains each batch with `TreeShap` (the ONNX file's own trees)."""

    def __init__(self, model_bytes: bytes, numeric: list[str], categorical: list[str],
                 threads: int = 1) -> None:
        import onnx

        model = onnx.load_from_string(model_bytes)
        self.shap = TreeShap(model)
        outputs = {o.name for o in model.graph.output}
        for name in (self.shap.encoded, self.shap.raw):
            if name not in outputs:
                model.graph.output.append(onnx.helper.make_tensor_value_info(
                    name, onnx.TensorProto.FLOAT, None))
        super().__init__(model.SerializeToString(), numeric, categorical, threads)
        self.fetch = list(dict.fromkeys([self.prob_output, self.shap.encoded, self.shap.raw]))

    def explain(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P(label = 1), raw output in `shap.space`, contributions (rows, inputs)) of one batch
        of onnxruntime feeds; the probability is the one `predict_proba` gives."""
        got = dict(zip(self.fetch, self.session.run(self.fetch, feeds)))
        raw = np.asarray(got[self.shap.raw], dtype=np.float64)
        raw = raw[:, self.shap.raw_column] if raw.ndim == 2 and raw.shape[1] > 1 else raw.ravel()
        probs = np.asarray(got[self.prob_output])[:, 1].astype(np.float64)
        values = self.shap.values(got[self.shap.encoded])
        finite = np.isfinite(raw)  # a NaN output is the scoring task's error to report
        error = float(np.max(np.abs(values.sum(axis=1) + self.shap.base_value - raw)[finite],
                             initial=0.0))
        if not error <= ADDITIVITY_TOLERANCE:
            raise ValueError(f"TreeSHAP contributions do not add up to the ONNX model's "
                             f"{self.shap.space} (max error {error:.3g} > "
                             f"{ADDITIVITY_TOLERANCE:g}): not an explanation of this model")
        return probs, raw, values
