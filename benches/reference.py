#!/usr/bin/env python3
"""Framework baselines for `ddrm bench --vs ...`: times the same operation, on the same data
and thread count, in NumPy / SciPy / faiss / PyTorch (whichever are installed).

Called by ddrm as:  reference.py OP DIR --threads N --reps R --warmup W --frameworks a,b,...
DIR holds meta.json and raw little-endian arrays written by ddrm. Prints one JSON object:
{framework: {"median_ms": .., "min_ms": .., "max_ms": ..} or {"missing": reason}}.
"""
import json
import os
import sys
import time


# minimum warm-up time per timed side (matches WARM_MIN in src/bench/timing.rs)
WARM_SECONDS = 0.25

def main():
    op, d = sys.argv[1], sys.argv[2]
    args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    threads = args.get("--threads", "1")
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = threads
    reps = int(args.get("--reps", "5"))
    warmup = int(args.get("--warmup", "1"))
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
        # warm-up: at least `warmup` runs and, when warming up at all, 0.25 s (as ddrm does)
        t0 = time.perf_counter()
        k = 0
        while k < warmup or (warmup > 0 and time.perf_counter() - t0 < WARM_SECONDS):
            fn()
            k += 1
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        ts.sort()
        out[fw] = {"median_ms": ts[len(ts) // 2], "min_ms": ts[0], "max_ms": ts[-1]}
    print(json.dumps(out))


def torch_on(fw, threads):
    """torch, the device of framework `fw` ("torch": CPU, "torch-cuda": the first GPU), and a
    wrapper that makes a timed call wait for the GPU's queued work."""
    import torch
    torch.set_num_threads(threads)
    if fw == "torch":
        return torch, "cpu", lambda f: f
    if not torch.cuda.is_available():
        raise NotImplementedError("torch-cuda: torch sees no GPU")

    def sync(f):
        def run():
            r = f()
            torch.cuda.synchronize()
            return r
        return run
    return torch, "cuda", sync


def load(np, d, name, dtype, shape):
    return np.fromfile(os.path.join(d, name), dtype=dtype).reshape(shape)


def build(op, fw, d, meta, threads):
    import numpy as np
    if op == "gemm":
        m, n, k = meta["m"], meta["n"], meta["k"]
        tra, trb = meta.get("ta", False), meta.get("tb", False)
        rng = np.random.default_rng(0)
        # stored as ddrm stores them; the transposes are views (BLAS reads them transposed)
        a = rng.standard_normal((k, m) if tra else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if trb else (k, n), dtype=np.float32)
        if fw == "numpy":
            opa, opb = (a.T if tra else a), (b.T if trb else b)
            return lambda: opa @ opb
        if fw in ("torch", "torch-cuda"):
            torch, dev, sync = torch_on(fw, threads)
            ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
            opa, opb = (ta.t() if tra else ta), (tb.t() if trb else tb)
            return sync(lambda: opa @ opb)
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
        if fw in ("torch", "torch-cuda"):
            torch, dev, sync = torch_on(fw, threads)
            a = torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(values), size=(n, n)).to(dev)
            tx = torch.from_numpy(x).to(dev)
            return sync(lambda: a @ tx)
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
        if fw in ("torch", "torch-cuda"):
            torch, dev, sync = torch_on(fw, threads)
            tq, ti = torch.from_numpy(q).to(dev), torch.from_numpy(it).to(dev)
            tr, tc = torch.from_numpy(rows).to(dev), torch.from_numpy(midx).to(dev)
            def run():
                outs = []
                for s in range(0, nu, block):
                    e = min(nu, s + block)
                    sc = tq[s:e] @ ti.T
                    lo, hi = mptr[s], mptr[e]
                    sc[tr[lo:hi] - s, tc[lo:hi]] = -float("inf")
                    outs.append(torch.topk(sc, k, dim=1).indices)
                return outs
            return sync(run)
        raise NotImplementedError(f"{fw} has no top-K baseline")
    if op == "ddrm_epoch" and fw in ("torch", "torch-cuda"):
        torch, dev, sync = torch_on(fw, threads)
        return sync(epoch_baseline(op, np, torch, d, meta, dev))
    if op in ("mf_epoch", "lightgcn_epoch", "sgl_epoch", "ddrm_epoch"):
        if fw != "torch":
            raise NotImplementedError(f"{fw} has no {op} baseline")
        import torch
        torch.set_num_threads(threads)
        return epoch_baseline(op, np, torch, d, meta)
    raise NotImplementedError(f"unknown op {op}")


def sample_epoch(np, indptr, indices, n_items, epoch):
    """BPR triplets as ddrm samples them: every train interaction once in a shuffled order,
    one uniform negative the user has not interacted with (vectorized rejection)."""
    rng = np.random.default_rng(epoch)
    n_users = len(indptr) - 1
    row_of = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    keys = row_of * n_items + indices  # sorted: CSR rows are sorted
    perm = rng.permutation(len(indices))
    users, pos = row_of[perm], indices[perm]
    neg = rng.integers(0, n_items, len(perm))
    bad = np.arange(len(perm))
    while len(bad):
        k = users[bad] * n_items + neg[bad]
        at = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
        bad = bad[keys[at] == k]
        neg[bad] = rng.integers(0, n_items, len(bad))
    return users, pos, neg


def epoch_baseline(op, np, torch, d, meta, dev="cpu"):
    """One training epoch written the usual PyTorch way (autograd, torch.optim), with the
    same data, sizes and hyper-parameters as ddrm's epoch; DDRM's on device `dev` (the
    caller waits for the GPU)."""
    import torch.nn.functional as F
    nu, ni = meta["n_users"], meta["n_items"]
    indptr = load(np, d, "train_indptr.bin", np.uint32, (-1,)).astype(np.int64)
    indices = load(np, d, "train_indices.bin", np.uint32, (-1,)).astype(np.int64)
    state, cache = {"epoch": 0}, {}
    torch.manual_seed(0)
    if op in ("mf_epoch", "lightgcn_epoch", "sgl_epoch"):
        dim, batch, lr, reg, layers = meta["d"], meta["batch"], meta["lr"], meta["reg"], meta["layers"]
        if op == "mf_epoch":
            # the equivalent of ddrm's row-sparse (lazy) Adam: sparse embedding + SparseAdam
            emb = torch.nn.Embedding(nu + ni, dim, sparse=True)
            torch.nn.init.normal_(emb.weight, std=0.1)
            opt = torch.optim.SparseAdam(emb.parameters(), lr=lr)
            lookup = emb
            ego_rows = emb
        else:
            n = nu + ni
            ip = load(np, d, "indptr.bin", np.uint32, (-1,)).astype(np.int64)
            ix = load(np, d, "indices.bin", np.uint32, (-1,)).astype(np.int64)
            vals = load(np, d, "values.bin", np.float32, (-1,))
            # CSR: faster than the COO that LightGCN's reference code uses (measured: 144 vs
            # 176 ms per ML-1M-size batch), so the comparison is against torch's better option
            adj = torch.sparse_csr_tensor(torch.from_numpy(ip), torch.from_numpy(ix), torch.from_numpy(vals), size=(n, n))
            ego = torch.nn.Parameter(torch.randn(n, dim) * 0.1)
            opt = torch.optim.Adam([ego], lr=lr)

            def lookup(idx):
                return cache["fin"][idx]

            def ego_rows(idx):
                return ego[idx]

            row_of = np.repeat(np.arange(nu, dtype=np.int64), np.diff(indptr))

            def edge_dropped_view(rng):
                # SGL-ED: keep each train edge with probability 1 - rho, re-normalize
                keep = rng.random(len(indices)) >= meta["drop_ratio"]
                u, i = row_of[keep], indices[keep]
                du = np.bincount(u, minlength=nu).astype(np.float32)
                di = np.bincount(i, minlength=ni).astype(np.float32)
                w = 1.0 / np.sqrt(du[u] * di[i])
                rows = torch.from_numpy(np.concatenate([u, nu + i]))
                cols = torch.from_numpy(np.concatenate([nu + i, u]))
                vals = torch.from_numpy(np.concatenate([w, w]))
                return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n)).coalesce().to_sparse_csr()

            def propagate(g):
                x, acc = ego, ego
                for _ in range(layers):
                    x = torch.sparse.mm(g, x)
                    acc = acc + x
                return acc / (layers + 1)

            def infonce(a, b):
                a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
                s = a @ b.T / meta["tau"]
                return F.cross_entropy(s, torch.arange(len(a)))

        def run(limit=None):
            state["epoch"] += 1
            if op == "sgl_epoch":
                rng = np.random.default_rng(1000 + state["epoch"])
                views = [edge_dropped_view(rng), edge_dropped_view(rng)]
            u, p, q = sample_epoch(np, indptr, indices, ni, state["epoch"])
            u, p, q = torch.from_numpy(u), torch.from_numpy(p + nu), torch.from_numpy(q + nu)
            for s in range(0, len(u) if limit is None else min(len(u), limit * batch), batch):
                bu, bp, bq = u[s:s + batch], p[s:s + batch], q[s:s + batch]
                if op != "mf_epoch":
                    cache["fin"] = propagate(adj)
                eu, ei, ej = lookup(bu), lookup(bp), lookup(bq)
                sp, sn = (eu * ei).sum(1), (eu * ej).sum(1)
                r = ego_rows(bu).pow(2).sum() + ego_rows(bp).pow(2).sum() + ego_rows(bq).pow(2).sum()
                loss = F.softplus(sn - sp).mean() + reg * 0.5 * r / len(bu)
                if op == "sgl_epoch":
                    # InfoNCE between the two views on the batch's unique users and items
                    v1, v2 = propagate(views[0]), propagate(views[1])
                    uu, ui = torch.unique(bu), torch.unique(bp)
                    loss = loss + meta["ssl_weight"] * (infonce(v1[uu], v2[uu]) + infonce(v1[ui], v2[ui]))
                opt.zero_grad()
                loss.backward()
                opt.step()
        run(limit=3)  # prime torch's lazy initialization (not timed)
        return run
    # DDRM: two denoisers on frozen embeddings (ddrm's DdrmConfig in meta["ddrm"])
    c = meta["ddrm"]
    dim = meta["d"]
    emb = torch.from_numpy(load(np, d, "emb.bin", np.float32, (nu + ni, dim))).to(dev)
    acts = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "none": torch.nn.Identity}
    act = acts.get(str(c["act"]).lower(), torch.nn.Tanh)
    sd = c["step_dim"]

    class Denoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.step = torch.nn.Linear(sd, sd)
            dims = [2 * dim + sd] + list(c["hidden"]) + [dim]
            mods = []
            for k in range(len(dims) - 1):
                mods.append(torch.nn.Linear(dims[k], dims[k + 1]))
                if k + 2 < len(dims):
                    mods.append(act())
            self.mlp = torch.nn.Sequential(*mods)
            self.drop = torch.nn.Dropout(c["dropout"])

        def forward(self, x, enc, cond):
            return self.mlp(torch.cat([self.drop(x), self.step(enc), cond], 1))

    T = c["steps"]
    lin = np.linspace(c["noise_min"], c["noise_max"], T) if T > 1 else np.array([c["noise_min"]])
    abar_s = 1.0 - c["noise_scale"] * lin
    betas = np.concatenate([[1 - abar_s[0]], np.minimum(1 - abar_s[1:] / abar_s[:-1], 0.999)])
    betas[0] = 1e-5
    abar = np.cumprod(1 - betas)
    sa = torch.tensor(np.sqrt(abar), dtype=torch.float32, device=dev)
    s1a = torch.tensor(np.sqrt(1 - abar), dtype=torch.float32, device=dev)
    half = sd // 2
    freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None]
    enc_table = torch.cat([torch.cos(ang), torch.sin(ang)], 1).float()
    if sd % 2:
        enc_table = torch.cat([enc_table, torch.zeros(T, 1)], 1)
    enc_table = enc_table.to(dev)
    udn, idn = Denoiser().to(dev), Denoiser().to(dev)
    opts = [torch.optim.Adam(m.parameters(), lr=c["lr"], weight_decay=c["weight_decay"]) for m in (udn, idn)]
    lam, gamma, batch = c["lambda"], c["gamma"], c["batch"]

    def run(limit=None):
        state["epoch"] += 1
        u, p, q = sample_epoch(np, indptr, indices, ni, state["epoch"])
        u, p, q = (torch.from_numpy(x).to(dev) for x in (u, p + nu, q + nu))
        for s in range(0, len(u) if limit is None else min(len(u), limit * batch), batch):
            eu, ei, ej = emb[u[s:s + batch]], emb[p[s:s + batch]], emb[q[s:s + batch]]
            n = len(eu)
            t = torch.randint(0, T, (n,), device=dev)
            xu = sa[t, None] * eu + s1a[t, None] * torch.randn_like(eu)
            xi = sa[t, None] * ei + s1a[t, None] * torch.randn_like(ei)
            enc = enc_table[t]
            hu, hi = udn(xu, enc, ei), idn(xi, enc, eu)
            sp, sn = (hu * hi).sum(1), (hu * ej).sum(1)
            w = torch.sigmoid(sp).detach() ** gamma if gamma != 0 else torch.ones_like(sp)
            rec = 0.5 * ((hu - eu).pow(2).mean(1) + (hi - ei).pow(2).mean(1))
            loss = (w * (lam * F.softplus(sn - sp) + (1 - lam) * rec)).mean()
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
    run(limit=3)  # prime torch's lazy initialization (not timed)
    return run


if __name__ == "__main__":
    main()
