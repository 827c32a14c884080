'use strict';
// Node client (client/node/ntclient.js) against a real nt-server, checked with closed forms computed here,
// cross-checks between layouts / x2 = None / explicit x2, and golden cases.
//
//   scripts/run_node_tests.sh          (npm ci in client/node when needed, then the line below)
//   node --test tests/node/*_test.js   (from the repository root, after npm ci in client/node)
//
// The server is $NT_SERVER_BIN, default build/server/nt-server; golden cases come from $NT_GOLDEN_DIR,
// default ../shared/golden/cases (that test is skipped when the directory is missing).

const assert = require('node:assert/strict');
const {execFileSync, spawn} = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {test, before, after} = require('node:test');

const REPO = path.resolve(__dirname, '..', '..');
const nt = require(path.join(REPO, 'client', 'node', 'ntclient.js'));
const {stax} = nt;

const SERVER_BIN = process.env.NT_SERVER_BIN || path.join(REPO, 'build', 'server', 'nt-server');
const GOLDEN_DIR = process.env.NT_GOLDEN_DIR || path.resolve(REPO, '..', 'shared', 'golden', 'cases');
const STARTUP_TIMEOUT_MS = 30000;
const RTOL = 1e-10;

// Tests start their own servers: never talk to one from the environment.
for (const name of ['NT_SERVER', 'NT_TOKEN', 'NT_TLS_CA']) delete process.env[name];

// ---------------------------------------------------------------------------------------------------
// Server fixture.

let server = null;  // The shared plaintext server of most tests.
let conn = null;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Starts nt-server on a free loopback port; resolves to {proc, port, log(), stop()} once it wrote its port.
async function startServer(extraArgs = []) {
  if (!fs.existsSync(SERVER_BIN)) {
    throw new Error(`nt-server binary not found at ${SERVER_BIN} (build it, or set NT_SERVER_BIN)`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nt-node-test-'));
  const portFile = path.join(dir, 'port');
  const proc = spawn(SERVER_BIN, ['--address=127.0.0.1:0', `--port_file=${portFile}`, '--threads=1', ...extraArgs],
                     {stdio: ['ignore', 'pipe', 'pipe']});
  let log = '';
  proc.stdout.on('data', (d) => { log += d; });
  proc.stderr.on('data', (d) => { log += d; });
  let exited = null;
  const exitedPromise = new Promise((resolve) => proc.on('exit', (code, signal) => {
    exited = `code ${code}, signal ${signal}`;
    resolve();
  }));
  const killOnExit = () => { if (exited === null) proc.kill('SIGKILL'); };
  process.on('exit', killOnExit);
  const handle = {
    proc,
    port: null,
    log: () => log,
    async stop() {
      if (exited === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 15000);
        await exitedPromise;
        clearTimeout(timer);
      }
      process.removeListener('exit', killOnExit);
      fs.rmSync(dir, {recursive: true, force: true});
      return exited;
    },
  };
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (handle.port === null) {
    if (exited !== null || Date.now() > deadline) {
      await handle.stop();
      throw new Error(`nt-server ${exited !== null ? `exited (${exited})` : 'timed out'} before writing ` +
                      `its port; args ${extraArgs}; log:\n${log}`);
    }
    try {
      const text = fs.readFileSync(portFile, 'ascii');
      if (text.endsWith('\n')) handle.port = Number.parseInt(text, 10);  // Not a half-written file.
    } catch (e) { /* not yet */ }
    if (handle.port === null) await sleep(20);
  }
  return handle;
}

// Polls grpc.health.v1 until SERVING.
async function waitServing(connection, handle) {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    try {
      if (await connection.health('', {timeout: 1}) === 'SERVING') return;
    } catch (e) { /* starting */ }
    if (handle.proc.exitCode !== null || Date.now() > deadline) {
      throw new Error(`nt-server not SERVING (exit code ${handle.proc.exitCode}); log:\n${handle.log()}`);
    }
    await sleep(50);
  }
}

before(async () => {
  server = await startServer();
  conn = nt.connect(`127.0.0.1:${server.port}`);
  await waitServing(conn, server);
});

after(async () => {
  if (conn) conn.close();
  if (server) {
    const exit = await server.stop();
    assert.equal(exit, 'code 0, signal null', `nt-server did not exit cleanly after SIGTERM; log:\n${server.log()}`);
  }
});

// ---------------------------------------------------------------------------------------------------
// Helpers.

// Deterministic normal samples (mulberry32 + Box-Muller).
function rng(seed) {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

function randn(shape, seed) {
  const next = rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return {shape, data: Float64Array.from({length: n}, next)};
}

function row(x, i) {
  const d = x.shape[x.shape.length - 1];
  return x.data.subarray(i * d, (i + 1) * d);
}

function dot(a, b) {
  let s = 0;
  for (let k = 0; k < a.length; k++) s += a[k] * b[k];
  return s;
}

// A (rows x cols) array {shape, data} with entries f(i, j).
function matrix(rows, cols, f) {
  const data = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) data[i * cols + j] = f(i, j);
  return {shape: [rows, cols], data};
}

function vector(n, f) {
  return {shape: [n], data: Float64Array.from({length: n}, (_, i) => f(i))};
}

function maxAbs(data) {
  let m = 0;
  for (const v of data) m = Math.max(m, Math.abs(v));
  return m;
}

// |got - want| <= atol + rtol |want| entrywise (atol default: 1e-3 rtol max|want|), same shapes.
// `loose` (optional): flat indices checked with `looseRtol` instead of rtol (see reluDual).
function assertClose(got, want, what, {rtol = RTOL, atol = null, loose = null, looseRtol = 1e-7} = {}) {
  assert.ok(got, `${what}: missing`);
  assert.deepEqual(got.shape, want.shape, `${what}: shape`);
  assert.ok(got.data instanceof Float64Array, `${what}: data is not a Float64Array`);
  const tol = atol === null ? 1e-3 * rtol * maxAbs(want.data) : atol;
  for (let i = 0; i < want.data.length; i++) {
    const g = got.data[i];
    const w = want.data[i];
    const r = loose !== null && loose.has(i) ? looseRtol : rtol;
    if (!(Math.abs(g - w) <= tol + r * Math.abs(w))) {
      assert.fail(`${what}: entry ${i} (flat) is ${g}, expected ${w} (|diff| ${Math.abs(g - w)}, ` +
                  `atol ${tol}, rtol ${r}; shape [${want.shape}])`);
    }
  }
}

// Flat indices of the [i, i] entries of an (n, n) matrix.
function diagonalIndices(n) {
  return new Set(Array.from({length: n}, (_, i) => i * n + i));
}

// ReLU dual (arc-cosine kernel, elementwise.md 3.1): [T, Tdot] for (q11, q12, q22), exact (theta = 0) for
// an input paired with itself. The server (like upstream) evaluates theta = atan2(sqrt(q11 q22 - q12^2),
// q12) there too, where rounding in q11 q22 - q12^2 ~ 1e-16 q^2 gives theta ~ 1e-8 and so Tdot (the NTK)
// a relative error ~ 1e-9 (T is flat in theta at 0, so the NNGP is not affected): those NTK entries are
// checked to 1e-7.
function reluDual(q11, q12, q22, sameInput) {
  if (sameInput) return [q12 / 2, 0.5];  // theta = 0 exactly.
  const r = Math.sqrt(Math.max(q11 * q22 - q12 * q12, 0));
  const theta = Math.atan2(r, q12);
  return [(r + (Math.PI - theta) * q12) / (2 * Math.PI), (Math.PI - theta) / (2 * Math.PI)];
}

// Dense(W1, b1) -> Relu -> Dense(W2, b2) in the NTK parameterisation; x2 null = x1 as the same batch.
function mlpKernels(x1, x2, {W1, b1, W2, b2}) {
  const d = x1.shape[1];
  const same = x2 === null;
  const y = same ? x1 : x2;
  const q = (a, b) => W1 * W1 * dot(a, b) / d + b1 * b1;  // First layer: nngp = ntk.
  const entry = (a, b, sameInput) => {
    const [T, Tdot] = reluDual(q(a, a), q(a, b), q(b, b), sameInput);
    const nngp = W2 * W2 * T + b2 * b2;
    return [nngp, nngp + W2 * W2 * Tdot * q(a, b)];
  };
  const n1 = x1.shape[0];
  const n2 = y.shape[0];
  const nngp = matrix(n1, n2, (i, j) => entry(row(x1, i), row(y, j), same && i === j)[0]);
  const ntk = matrix(n1, n2, (i, j) => entry(row(x1, i), row(y, j), same && i === j)[1]);
  const cov = (x) => vector(x.shape[0], (i) => entry(row(x, i), row(x, i), true)[0]);
  return {nngp, ntk, cov1: cov(x1), cov2: same ? null : cov(x2)};
}

// Full-spatial entry [i, j, s1, s1', s2, s2', ...] of an array of shape (N1, N2, S1, S1, S2, S2, ...).
function spatialDiagonal(full) {
  // (N1, N2, S1, S1, S2, S2, ...) -> (N1, N2, S1, S2, ...): the s = s' entries.
  const [n1, n2, ...trailing] = full.shape;
  const sizes = trailing.filter((_, k) => k % 2 === 0);
  const tFull = trailing.reduce((a, b) => a * b, 1);
  const tDiag = sizes.reduce((a, b) => a * b, 1);
  const out = new Float64Array(n1 * n2 * tDiag);
  for (let p = 0; p < n1 * n2; p++) {
    for (let s = 0; s < tDiag; s++) {
      let rem = s;
      let idx = 0;
      let stride = tFull;
      const coords = [];
      for (let k = sizes.length - 1; k >= 0; k--) {
        coords[k] = rem % sizes[k];
        rem = Math.floor(rem / sizes[k]);
      }
      for (let k = 0; k < sizes.length; k++) {
        stride /= sizes[k];
        idx += coords[k] * stride;
        stride /= sizes[k];
        idx += coords[k] * stride;
      }
      out[p * tDiag + s] = full.data[p * tFull + idx];
    }
  }
  return {shape: [n1, n2, ...sizes], data: out};
}

// ---------------------------------------------------------------------------------------------------
// Tests.

test('(f) health is SERVING; describe answers', async () => {
  assert.equal(await conn.health(), 'SERVING');
  const arch = stax.serial(stax.Dense(8, {W_std: 1.5, b_std: 0.05}), stax.Relu(), stax.Dense(1));
  const d = await conn.describe(arch, [7, 3], null, ['nngp', 'ntk'], {tileSize: 2});
  assert.deepEqual(d.arrays.map((a) => [a.name, a.shape, a.tiled_axes]),
                   [['nngp', [7, 7], 2], ['ntk', [7, 7], 2]]);
  assert.equal(d.tile_size, 2);
  assert.equal(d.num_tiles, 10);  // 4 x 4 tile positions, of which 10 are computed (mirrors count once).
});

test('(a) one Dense layer: nngp = W^2 x1 x2^T / d + b^2, NTK parameterisation ntk = nngp', async () => {
  const W = 1.3;
  const b = 0.2;
  const x1 = randn([6, 5], 1);
  const x2 = randn([4, 5], 2);
  const d = 5;
  const lin = (a, c) => W * W * dot(a, c) / d + b * b;
  const arch = stax.Dense(3, {W_std: W, b_std: b});

  const k = await conn.kernel(arch, x1, x2, ['nngp', 'ntk', 'cov1', 'cov2'], {tileSize: 4});
  const nngp = matrix(6, 4, (i, j) => lin(row(x1, i), row(x2, j)));
  assert.deepEqual(Object.keys(k), ['nngp', 'ntk', 'cov1', 'cov2']);
  assertClose(k.nngp, nngp, 'nngp');
  assertClose(k.ntk, nngp, 'ntk');
  assertClose(k.cov1, vector(6, (i) => lin(row(x1, i), row(x1, i))), 'cov1');
  assertClose(k.cov2, vector(4, (i) => lin(row(x2, i), row(x2, i))), 'cov2');

  const self = await conn.kernel(arch, x1, null, ['nngp', 'ntk'], {tileSize: 2});
  const nngpSelf = matrix(6, 6, (i, j) => lin(row(x1, i), row(x1, j)));
  assertClose(self.nngp, nngpSelf, 'nngp (x2 = None)');
  assertClose(self.ntk, nngpSelf, 'ntk (x2 = None)');

  // Standard parameterisation (linear.md 5.2): ntk = (d / s0) x1 x2^T / d + W^2 * 0 + 1 (bias present).
  const std = await conn.kernel(stax.Dense(3, {W_std: W, b_std: b, parameterization: 'standard'}), x1, x2,
                                ['nngp', 'ntk']);
  assertClose(std.nngp, nngp, 'standard nngp');
  assertClose(std.ntk, matrix(6, 4, (i, j) => dot(row(x1, i), row(x2, j)) + 1), 'standard ntk');
});

test('(b) Dense -> Relu -> Dense: arc-cosine nngp and ntk, x2 = None with mirrored tiles and x2 given',
     async () => {
  const p = {W1: 1.5, b1: 0.05, W2: 1.2, b2: 0.3};
  const arch = stax.serial(stax.Dense(512, {W_std: p.W1, b_std: p.b1}), stax.Relu(),
                           stax.Dense(1, {W_std: p.W2, b_std: p.b2}));
  const x1 = randn([7, 4], 3);
  const x2 = randn([5, 4], 4);

  const self = await conn.kernel(arch, x1, null, ['nngp', 'ntk'], {tileSize: 2});
  const mirrored = self.summary.num_tiles;
  assert.equal(self.header.tile_size, 2);
  assert.ok(mirrored < 2 * 16, `expected mirrored tiles (fewer than 32 tiles), got ${mirrored}`);
  assert.equal(self.summary.x1_is_x2, true);
  const wantSelf = mlpKernels(x1, null, p);
  assertClose(self.nngp, wantSelf.nngp, 'nngp (x2 = None)');
  assertClose(self.ntk, wantSelf.ntk, 'ntk (x2 = None)', {loose: diagonalIndices(7)});

  const k = await conn.kernel(arch, x1, x2, ['ntk', 'nngp'], {tileSize: 2});
  assert.deepEqual(Object.keys(k).sort(), ['nngp', 'ntk']);
  const want = mlpKernels(x1, x2, p);
  assertClose(k.nngp, want.nngp, 'nngp (x2 given)');
  assertClose(k.ntk, want.ntk, 'ntk (x2 given)');

  // get as a single string, server-chosen tile size.
  const only = await conn.kernel(arch, x1, x2, 'NNGP');
  assert.deepEqual(Object.keys(only), ['nngp']);
  assertClose(only.nngp, want.nngp, 'nngp (get = "NNGP")');
});

test('(c) cov1 / cov2, diagonal and full batch', async () => {
  const p = {W1: 1.1, b1: 0.4, W2: 0.9, b2: 0.1};
  const arch = stax.serial(stax.Dense(64, {W_std: p.W1, b_std: p.b1}), stax.Relu(),
                           stax.Dense(2, {W_std: p.W2, b_std: p.b2}));
  const x1 = randn([5, 3], 5);
  const x2 = randn([3, 3], 6);
  const want = mlpKernels(x1, x2, p);

  const k = await conn.kernel(arch, x1, x2, null, {tileSize: 2, diagonalBatch: true});
  assert.deepEqual(Object.keys(k).sort(), ['cov1', 'cov2', 'nngp', 'ntk']);
  assertClose(k.cov1, want.cov1, 'cov1 (diagonal batch)');
  assertClose(k.cov2, want.cov2, 'cov2 (diagonal batch)');
  assertClose(k.nngp, want.nngp, 'nngp');

  // Full batch: cov1 = nngp(x1, x1), cov2 = nngp(x2, x2), each a symmetric (mirrored) array.
  const full = await conn.kernel(arch, x1, x2, ['cov1', 'cov2'], {tileSize: 2, diagonalBatch: false});
  assertClose(full.cov1, mlpKernels(x1, null, p).nngp, 'cov1 (full batch)');
  assertClose(full.cov2, mlpKernels(x2, null, p).nngp, 'cov2 (full batch)');

  // x2 = None: no cov2.
  const self = await conn.kernel(arch, x1, null, null, {tileSize: 2});
  assert.equal(self.cov2, undefined);
  assertClose(self.cov1, want.cov1, 'cov1 (x2 = None)');
});

test('(d) FLOAT32 output: the float64 result rounded to float32', async () => {
  const arch = stax.serial(stax.Dense(16, {W_std: 1.5, b_std: 0.05}), stax.Relu(), stax.Dense(1));
  const x1 = randn([6, 3], 7);
  const k64 = await conn.kernel(arch, x1, null, null, {tileSize: 4});
  const k32 = await conn.kernel(arch, x1, null, null, {tileSize: 4, outputDtype: 'float32'});
  assert.equal(k32.header.dtype, nt.DType.FLOAT32);
  assert.equal(k64.header.dtype, nt.DType.FLOAT64);
  for (const name of ['nngp', 'ntk', 'cov1']) {
    assert.deepEqual(k32[name].shape, k64[name].shape);
    const rounded = {shape: k64[name].shape, data: k64[name].data.map(Math.fround)};
    assertClose(k32[name], rounded, `${name} (float32)`, {rtol: 0, atol: 0});
    assertClose(k32[name], k64[name], `${name} (float32 vs float64)`, {rtol: 2 ** -24});
  }
});

test('(e) a bad request rejects with INVALID_ARGUMENT naming out_dim', async () => {
  const arch = stax.serial(stax.Dense(0), stax.Relu(), stax.Dense(1));
  const x1 = randn([2, 3], 8);
  await assert.rejects(conn.kernel(arch, x1, null, 'nngp'), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.code, 3);
    assert.equal(e.code, nt.grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /out_dim/);
    assert.match(e.message, /out_dim/);
    return true;
  });
  await assert.rejects(conn.describe(stax.Dense(0), [2, 3]), (e) => e.code === 3 && /out_dim/.test(e.details));
  // The server is still fine.
  assert.equal(await conn.health(), 'SERVING');
});

test('(g) Identity on spatial inputs: full layout with mirrored tiles, rank-0 ntk', async () => {
  // Input kernel: nngp[i, j, h, h', w, w'] = x_i[h, w] . x_j[h', w'] / C; the NTK is the scalar 0.
  const [n, H, W, C] = [5, 3, 2, 2];
  const x = randn([n, H, W, C], 9);
  const at = (i, h, w) => x.data.subarray(((i * H + h) * W + w) * C, ((i * H + h) * W + w + 1) * C);
  const want = {shape: [n, n, H, H, W, W], data: new Float64Array(n * n * H * H * W * W)};
  let o = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    for (let h = 0; h < H; h++) for (let h2 = 0; h2 < H; h2++) {
      for (let w = 0; w < W; w++) for (let w2 = 0; w2 < W; w2++) want.data[o++] = dot(at(i, h, w), at(j, h2, w2)) / C;
    }
  }
  const k = await conn.kernel(stax.Identity(), x, null, null,
                              {tileSize: 2, diagonalBatch: false, diagonalSpatial: false});
  assert.equal(k.header.diagonal_spatial, false);
  assertClose(k.nngp, want, 'nngp (full spatial, x2 = None)');
  assertClose(k.cov1, want, 'cov1 (full batch, full spatial, x2 = None)');
  assert.deepEqual(k.ntk.shape, []);
  assert.deepEqual(Array.from(k.ntk.data), [0]);

  const diag = await conn.kernel(stax.Identity(), x, null, 'nngp', {tileSize: 2, diagonalSpatial: true});
  assertClose(diag.nngp, spatialDiagonal(want), 'nngp (diagonal spatial)');
});

// (N1, N2, ...) array with its columns (axis 1) permuted: out[:, j] = a[:, perm[j]].
function permuteColumns(a, perm) {
  const [n1, n2, ...trailing] = a.shape;
  const t = trailing.reduce((x, y) => x * y, 1);
  const out = new Float64Array(a.data.length);
  for (let i = 0; i < n1; i++) {
    for (let j = 0; j < n2; j++) out.set(a.data.subarray((i * n2 + perm[j]) * t, (i * n2 + perm[j] + 1) * t), (i * n2 + j) * t);
  }
  return {shape: a.shape, data: out};
}

// Rows of x in the order perm.
function permuteRows(x, perm) {
  const t = x.data.length / x.shape[0];
  const out = new Float64Array(x.data.length);
  perm.forEach((p, i) => out.set(x.data.subarray(p * t, (p + 1) * t), i * t));
  return {shape: x.shape, data: out};
}

test('(g) CNN: x2 = None (mirrored tiles) matches an explicit x2; diagonal-spatial = full diagonal', async () => {
  // An explicit x2 equal to x1 would be recognised as x1 (x1_is_x2, mirrored as well): x2 is x1 in another
  // order, so K(x1, x2)[:, j] = K(x1, x1)[:, perm[j]] is computed tile by tile without mirroring.
  const x = randn([5, 4, 3, 2], 10);
  const perm = [3, 0, 4, 2, 1];
  const x2 = permuteRows(x, perm);
  const convs = stax.serial(
      stax.Conv(4, [3, 3], {padding: 'SAME', W_std: 1.5, b_std: 0.1}), stax.Relu(),
      stax.Conv(2, [3, 3], {padding: 'SAME', W_std: 1.2, b_std: 0.05}));
  const opts = {tileSize: 2, diagonalBatch: true};

  // Spatial output (5, 5, 4, 4, 3, 3): mirrored tiles must swap each (s, s') pair.
  const self = await conn.kernel(convs, x, null, ['nngp', 'ntk'], {...opts, diagonalSpatial: false});
  assert.deepEqual(self.nngp.shape, [5, 5, 4, 4, 3, 3]);
  assert.equal(self.header.diagonal_spatial, false);
  assert.equal(self.summary.x1_is_x2, true);
  const given = await conn.kernel(convs, x, x2, ['nngp', 'ntk'], {...opts, diagonalSpatial: false});
  assert.equal(given.summary.x1_is_x2, false);
  assertClose(permuteColumns(self.nngp, perm), given.nngp, 'conv nngp: x2 = None vs x2 given');
  assertClose(permuteColumns(self.ntk, perm), given.ntk, 'conv ntk: x2 = None vs x2 given');
  // Symmetry of the assembled array: K[i, j, h, h', w, w'] = K[j, i, h', h, w', w'].
  const [n, , H, , W] = self.nngp.shape;
  const idx = (i, j, h, h2, w, w2) => ((((i * n + j) * H + h) * H + h2) * W + w) * W + w2;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let h = 0; h < H; h++) {
    for (let h2 = 0; h2 < H; h2++) for (let w = 0; w < W; w++) for (let w2 = 0; w2 < W; w2++) {
      assert.equal(self.nngp.data[idx(i, j, h, h2, w, w2)], self.nngp.data[idx(j, i, h2, h, w2, w)]);
    }
  }

  const diag = await conn.kernel(convs, x, null, ['nngp', 'ntk'], {...opts, diagonalSpatial: true});
  assert.deepEqual(diag.nngp.shape, [5, 5, 4, 3]);
  assert.equal(diag.header.diagonal_spatial, true);
  assertClose(diag.nngp, spatialDiagonal(self.nngp), 'conv nngp: diagonal spatial vs full diagonal');
  assertClose(diag.ntk, spatialDiagonal(self.ntk), 'conv ntk: diagonal spatial vs full diagonal');
  const diagGiven = await conn.kernel(convs, x, x2, ['nngp'], {...opts, diagonalSpatial: true});
  assertClose(permuteColumns(diag.nngp, perm), diagGiven.nngp,
              'conv nngp (diagonal spatial): x2 = None vs x2 given');

  // Pooled and flattened heads: (5, 5) kernels.
  for (const [label, head] of [['GlobalAvgPool', stax.GlobalAvgPool()], ['Flatten', stax.Flatten()]]) {
    const arch = stax.serial(stax.Conv(4, [3, 3], {padding: 'SAME', W_std: 1.4, b_std: 0.2}), stax.Relu(),
                             head, stax.Dense(1, {W_std: 1.1}));
    const a = await conn.kernel(arch, x, null, ['nngp', 'ntk'], {tileSize: 2});
    const b = await conn.kernel(arch, x, x2, ['nngp', 'ntk'], {tileSize: 3});
    assert.deepEqual(a.nngp.shape, [5, 5]);
    assertClose(permuteColumns(a.nngp, perm), b.nngp, `${label} nngp: x2 = None vs x2 given`);
    assertClose(permuteColumns(a.ntk, perm), b.ntk, `${label} ntk: x2 = None vs x2 given`);
  }
});

// Golden cases (../shared/golden/FORMAT.md): JSON architecture -> nt.v1.Layer object.
function layerFromJson(node) {
  if (node.layer === 'serial' || node.layer === 'parallel') {
    return {[node.layer]: {layers: node.layers.map(layerFromJson)}};
  }
  const field = node.layer.replace(/(?<=[a-z0-9])([A-Z])/g, '_$1').toLowerCase();  // GlobalAvgPool -> global_avg_pool
  const args = {};
  for (const [key, value] of Object.entries(node.args || {})) if (value !== null) args[key] = value;
  return {[field]: args};
}

const GOLDEN_CASES = [
  ['fc_deep_relu', {tileSize: 2}],               // x2 given, cov1 / cov2.
  ['fc_mixed_deep_same_inputs', {tileSize: 2}],  // x2 = None, full-batch cov1: mirrored tiles.
  ['conv2d_same_spatial_output', {tileSize: 1}], // (N1, N2, H, H, W, W).
];

test('(h) golden cases', async (t) => {
  if (!fs.existsSync(GOLDEN_DIR)) {
    t.skip(`no golden cases at ${GOLDEN_DIR} (set NT_GOLDEN_DIR)`);
    return;
  }
  for (const [name, options] of GOLDEN_CASES) {
    await t.test(name, async () => {
      const c = JSON.parse(fs.readFileSync(path.join(GOLDEN_DIR, `${name}.json`), 'utf8'));
      assert.equal(c.kind, 'kernel');
      const tensor = (a) => (a ? {shape: a.shape, data: Float64Array.from(a.data)} : null);
      const k = await conn.kernel(layerFromJson(c.architecture), tensor(c.inputs.x1), tensor(c.inputs.x2),
                                  c.options.get, {...options, diagonalBatch: c.options.diagonal_batch,
                                                  diagonalSpatial: c.options.diagonal_spatial});
      for (const [key, expected] of Object.entries(c.expected)) {
        const atol = typeof c.atol === 'number' ? c.atol : c.atol[key];
        assertClose(k[key], tensor(expected), `${name} ${key}`, {rtol: c.rtol, atol});
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------------
// Bearer token and TLS.

// A self-signed certificate for localhost / 127.0.0.1 (null without openssl).
function selfSignedCert(dir) {
  const key = path.join(dir, 'key.pem');
  const cert = path.join(dir, 'cert.pem');
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
                             '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
                             '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], {stdio: 'ignore'});
  } catch (e) {
    return null;
  }
  return {keyFile: key, certFile: cert, key: fs.readFileSync(key), cert: fs.readFileSync(cert)};
}

test('(i) token metadata and TLS, against an in-process gRPC server', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nt-node-tls-'));
  t.after(() => fs.rmSync(dir, {recursive: true, force: true}));
  const pem = selfSignedCert(dir);
  if (pem === null) {
    t.skip('openssl not available');
    return;
  }
  const {grpc} = nt;
  const protos = nt.protos();
  const seen = [];
  // A (3, 3, 2, 2) full-spatial nngp with K[i, j, s, s'] = K[j, i, s', s], a (3, 2, 2) cov1 (one tiled axis)
  // and a rank-0 ntk, streamed as FLOAT32 tiles of 2 rows / columns with mirrors above the diagonal.
  const n = 3;
  const S = 2;
  const want = {shape: [n, n, S, S], data: new Float64Array(n * n * S * S)};
  const value = (i, j, a, b) => 1 + i + 10 * j + 100 * a + 1000 * b;  // Upper triangle (i <= j).
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let a = 0; a < S; a++) for (let b = 0; b < S; b++) {
    want.data[((i * n + j) * S + a) * S + b] = i <= j ? value(i, j, a, b) : value(j, i, b, a);
  }
  const blockOf = (r, c, rows, cols) => {
    const data = [];
    for (let i = r; i < r + rows; i++) for (let j = c; j < c + cols; j++) {
      for (let k = 0; k < S * S; k++) data.push(want.data[(i * n + j) * S * S + k]);
    }
    return nt.toTensor({shape: [rows, cols, S, S], data}, 'float32');
  };
  const service = {
    ComputeKernel(call) {
      seen.push(['ComputeKernel', call.metadata.get('authorization')]);
      const tiles = [];
      for (const [r, rows] of [[0, 2], [2, 1]]) for (const [c, cols] of [[0, 2], [2, 1]]) {
        if (c >= r) tiles.push({name: 'nngp', row_offset: r, col_offset: c, block: blockOf(r, c, rows, cols), mirror: c > r});
      }
      tiles.push({name: 'cov1', row_offset: 0, block: nt.toTensor({shape: [2, S, S], data: [1, 2, 3, 4, 5, 6, 7, 8]}, 'float32')});
      tiles.push({name: 'cov1', row_offset: 2, block: nt.toTensor({shape: [1, S, S], data: [9, 10, 11, 12]}, 'float32')});
      tiles.push({name: 'ntk', block: nt.toTensor({shape: [], data: [0.5]}, 'float32')});
      call.write({header: {arrays: [{name: 'nngp', shape: [n, n, S, S], tiled_axes: 2},
                                    {name: 'cov1', shape: [n, S, S], tiled_axes: 1},
                                    {name: 'ntk', shape: [], tiled_axes: 0}],
                           dtype: 'FLOAT32', num_tiles: tiles.length, diagonal_spatial: false, tile_size: 2}});
      for (const tile of tiles) call.write({tile});
      call.write({summary: {x1_is_x2: true}});
      call.end();
    },
    Describe(call, callback) {
      seen.push(['Describe', call.metadata.get('authorization')]);
      callback({code: grpc.status.UNAUTHENTICATED, details: 'invalid bearer token'});
    },
  };
  const fake = new grpc.Server();
  fake.addService(protos.nt.KernelService.service, service);
  fake.addService(protos.health.Health.service, {
    Check(call, callback) {
      seen.push(['Check', call.metadata.get('authorization')]);
      callback(null, {status: 'SERVING'});
    },
  });
  const port = await new Promise((resolve, reject) => fake.bindAsync(
      '127.0.0.1:0', grpc.ServerCredentials.createSsl(null, [{private_key: pem.key, cert_chain: pem.cert}], false),
      (err, p) => (err ? reject(err) : resolve(p))));
  t.after(() => fake.forceShutdown());

  const tls = nt.connect(`localhost:${port}`, {token: 's3cret', rootCerts: pem.cert});
  try {
    assert.equal(tls.tls, true);
    assert.equal(await tls.health(), 'SERVING');
    const x = {shape: [n, 1], data: [1, 2, 3]};
    const k = await tls.kernel(stax.Dense(1), x, null, null, {outputDtype: 'float32'});
    assert.deepEqual(Object.keys(k), ['nngp', 'cov1', 'ntk']);
    assertClose(k.nngp, want, 'mirrored full-spatial nngp', {rtol: 0, atol: 0});
    assertClose(k.cov1, {shape: [n, S, S], data: Float64Array.from({length: 12}, (_, i) => i + 1)}, 'cov1',
                {rtol: 0, atol: 0});
    assert.deepEqual(k.ntk.shape, []);
    assert.deepEqual(Array.from(k.ntk.data), [0.5]);
    await assert.rejects(tls.describe(stax.Dense(1), [3, 1]),
                         (e) => e.code === 16 && e.details === 'invalid bearer token' && e.codeName === 'UNAUTHENTICATED');
  } finally {
    tls.close();
  }
  assert.deepEqual(seen, [['Check', ['Bearer s3cret']], ['ComputeKernel', ['Bearer s3cret']],
                          ['Describe', ['Bearer s3cret']]]);

  // The same from the environment: $NT_TOKEN and $NT_TLS_CA (a path).
  seen.length = 0;
  process.env.NT_TOKEN = 'from-env';
  process.env.NT_TLS_CA = pem.certFile;
  try {
    const envConn = nt.connect(`localhost:${port}`);
    try {
      assert.equal(await envConn.health(), 'SERVING');
    } finally {
      envConn.close();
    }
  } finally {
    delete process.env.NT_TOKEN;
    delete process.env.NT_TLS_CA;
  }
  assert.deepEqual(seen, [['Check', ['Bearer from-env']]]);

  // Plaintext connections send no token.
  assert.equal(conn.tls, false);
  assert.equal(conn.token, null);
});

test('(i) nt-server with --auth_token_file and TLS', async (t) => {
  let help = '';
  try {
    help = execFileSync(SERVER_BIN, ['--helpfull'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']});
  } catch (e) {
    help = `${e.stdout || ''}${e.stderr || ''}`;  // --helpfull exits non-zero.
  }
  if (!help.includes('auth_token_file') || !help.includes('tls_cert_file')) {
    t.skip('this nt-server has no --auth_token_file / --tls_cert_file');
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nt-node-auth-'));
  t.after(() => fs.rmSync(dir, {recursive: true, force: true}));
  const pem = selfSignedCert(dir);
  if (pem === null) {
    t.skip('openssl not available');
    return;
  }
  const tokens = path.join(dir, 'tokens');
  fs.writeFileSync(tokens, 'tok-1\ntok-2\n');
  const secure = await startServer([`--auth_token_file=${tokens}`, `--tls_cert_file=${pem.certFile}`,
                                    `--tls_key_file=${pem.keyFile}`]);
  const good = nt.connect(`localhost:${secure.port}`, {token: 'tok-2', rootCerts: pem.cert});
  const anonymous = nt.connect(`localhost:${secure.port}`, {rootCerts: pem.cert});
  try {
    await waitServing(anonymous, secure);  // Health stays open without a token.
    const W = 1.3;
    const b = 0.2;
    const x1 = randn([3, 4], 11);
    const k = await good.kernel(stax.Dense(2, {W_std: W, b_std: b}), x1, null, 'nngp');
    assertClose(k.nngp, matrix(3, 3, (i, j) => W * W * dot(row(x1, i), row(x1, j)) / 4 + b * b), 'nngp over TLS');
    await assert.rejects(anonymous.kernel(stax.Dense(2), x1, null, 'nngp'), (e) => e.code === 16);
    const wrong = nt.connect(`localhost:${secure.port}`, {token: 'nope', rootCerts: pem.cert});
    try {
      await assert.rejects(wrong.describe(stax.Dense(2), [3, 4]), (e) => e.code === 16);
    } finally {
      wrong.close();
    }
  } finally {
    good.close();
    anonymous.close();
    const exit = await secure.stop();
    assert.equal(exit, 'code 0, signal null', `secure nt-server did not exit cleanly; log:\n${secure.log()}`);
  }
});
