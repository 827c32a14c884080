'use strict';
// NNGP and NTK of serial(Dense(512, W_std=1.5, b_std=0.05), Relu(), Dense(1)) on a few random inputs,
// computed by nt-server at $NT_SERVER (default localhost:50051):
//
//   cd client/node && npm ci && NT_SERVER=localhost:50051 node example.js

const nt = require('./ntclient');
const {stax} = nt;

function randn(shape) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    data[i] = Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
  }
  return {shape, data};
}

function format(array) {
  const [rows, cols] = array.shape;
  const lines = [];
  for (let i = 0; i < rows; i++) {
    const row = Array.from(array.data.subarray(i * cols, (i + 1) * cols), (v) => v.toFixed(6).padStart(10));
    lines.push(`  [${row.join(' ')}]`);
  }
  return lines.join('\n');
}

async function main() {
  const conn = nt.connect(process.env.NT_SERVER);  // Also $NT_TOKEN (bearer token), $NT_TLS_CA (TLS).
  try {
    console.log(`server ${conn.address}: ${await conn.health()}`);
    const arch = stax.serial(stax.Dense(512, {W_std: 1.5, b_std: 0.05}), stax.Relu(), stax.Dense(1));
    const x1 = randn([4, 3]);
    const x2 = randn([3, 3]);

    const k = await conn.kernel(arch, x1, x2, ['nngp', 'ntk']);
    console.log(`nngp(x1, x2) ${JSON.stringify(k.nngp.shape)}:\n${format(k.nngp)}`);
    console.log(`ntk(x1, x2) ${JSON.stringify(k.ntk.shape)}:\n${format(k.ntk)}`);

    const self = await conn.kernel(arch, x1, null, ['nngp', 'ntk']);  // x2 = None: symmetric kernels.
    console.log(`nngp(x1, x1) ${JSON.stringify(self.nngp.shape)}:\n${format(self.nngp)}`);
    console.log(`ntk(x1, x1) ${JSON.stringify(self.ntk.shape)}:\n${format(self.ntk)}`);
    console.log(`computed in ${self.summary.compute_seconds.toFixed(4)} s`);
  } finally {
    conn.close();
  }
}

main().catch((e) => {
  console.error(e.code !== undefined ? `error ${e.code} (${e.codeName}): ${e.details}` : e);
  process.exit(1);
});
