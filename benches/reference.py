#!/usr/bin/env python3
"""Framework baselines for `ddrm bench --vs ...`: times the same operation, on the same data
and thread count, in NumPy / SciPy / faiss / PyTorch (whichever are installed).

Called by ddrm as:  reference.py OP DIR --threads N --reps R --frameworks a,b,...
DIR holds meta.json and raw little-endian arrays written by ddrm. Prints one JSON object:
{framework: {"median_ms": .., "min_ms": .., "max_ms": ..} or {"missing": reason}}.
"""
import json
import os
import sys
import time


def main():
    op, d = sys.argv[1], sys.argv[2]
    args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    threads = args.get("--threads", "1")
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = threads
    reps = int(args.get("--reps", "5"))
    fws = args.get("--frameworks", "numpy").split(",")
    meta = json.load(open(os.path.join(d, "meta.json")))
    out = {}
    for fw in fws:
        try:
            fn = build(op, fw, d, meta, int(threads))
        except ImportError as e:
            out[fw] = {"missing": f"{fw} not installed ({e})"}
            continue
        except NotImplementedError as e:
            out[fw] = {"missing": str(e)}
            continue
        fn()  # warm-up
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        ts.sort()
        out[fw] = {"median_ms": ts[len(ts) // 2], "min_ms": ts[0], "max_ms": ts[-1]}
    print(json.dumps(out))


def load(np, d, name, dtype, shape):
    return np.fromfile(os.path.join(d, name), dtype=dtype).reshape(shape)


def build(op, fw, d, meta, threads):
    import numpy as np
    if op == "gemm":
        m, n, k = meta["m"], meta["n"], meta["k"]
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        if fw == "numpy":
            return lambda: a @ b
        if fw == "torch":
            import torch
            torch.set_num_threads(threads)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            return lambda: ta @ tb
        raise NotImplementedError(f"{fw} has no gemm baseline")
    if op == "spmm":
        n, dim = meta["n"], meta["d"]
        indptr = load(np, d, "indptr.bin", np.uint32, (n + 1,)).astype(np.int64)
        indices = load(np, d, "indices.bin", np.uint32, (-1,)).astype(np.int64)
        values = load(np, d, "values.bin", np.float32, (-1,))
        x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
        if fw == "scipy":
            import scipy.sparse as sp
            a = sp.csr_matrix((values, indices, indptr), shape=(n, n))
            return lambda: a @ x
        if fw == "torch":
            import torch
            torch.set_num_threads(threads)
            a = torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(values), size=(n, n))
            tx = torch.from_numpy(x)
            return lambda: a @ tx
        raise NotImplementedError(f"{fw} has no spmm baseline")
    if op == "topk":
        nu, ni, dim, k = meta["users"], meta["items"], meta["d"], meta["k"]
        q = load(np, d, "queries.bin", np.float32, (nu, dim))
        it = load(np, d, "items.bin", np.float32, (ni, dim))
        mptr = load(np, d, "mask_indptr.bin", np.uint32, (nu + 1,)).astype(np.int64)
        midx = load(np, d, "mask_indices.bin", np.uint32, (-1,)).astype(np.int64)
        rows = np.repeat(np.arange(nu), np.diff(mptr))
        block = 1024
        if fw == "numpy":
            def run():
                res = np.empty((nu, k), dtype=np.int64)
                for s in range(0, nu, block):
                    e = min(nu, s + block)
                    sc = q[s:e] @ it.T
                    lo, hi = mptr[s], mptr[e]
                    sc[rows[lo:hi] - s, midx[lo:hi]] = -np.inf
                    part = np.argpartition(-sc, k, axis=1)[:, :k]
                    ps = np.take_along_axis(sc, part, 1)
                    res[s:e] = np.take_along_axis(part, np.argsort(-ps, axis=1), 1)
                return res
            return run
        if fw == "faiss":
            import faiss
            faiss.omp_set_num_threads(threads)
            index = faiss.IndexFlatIP(dim)
            index.add(it)
            extra = int(np.diff(mptr).max()) if nu else 0
            kk = min(ni, k + extra)
            def run():
                _, ids = index.search(q, kk)
                res = np.empty((nu, k), dtype=np.int64)
                for u in range(nu):
                    seen = set(midx[mptr[u]:mptr[u + 1]].tolist())
                    r = [i for i in ids[u] if i not in seen][:k]
                    res[u, :len(r)] = r
                return res
            return run
        if fw == "torch":
            import torch
            torch.set_num_threads(threads)
            tq, ti = torch.from_numpy(q), torch.from_numpy(it)
            tr, tc = torch.from_numpy(rows), torch.from_numpy(midx)
            def run():
                outs = []
                for s in range(0, nu, block):
                    e = min(nu, s + block)
                    sc = tq[s:e] @ ti.T
                    lo, hi = mptr[s], mptr[e]
                    sc[tr[lo:hi] - s, tc[lo:hi]] = -float("inf")
                    outs.append(torch.topk(sc, k, dim=1).indices)
                return outs
            return run
        raise NotImplementedError(f"{fw} has no top-K baseline")
    raise NotImplementedError(f"unknown op {op}")


if __name__ == "__main__":
    main()
