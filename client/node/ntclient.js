'use strict';
/**
 * ntclient: Node.js client of nt-server (closed-form infinite-width NNGP / NTK kernels over gRPC).
 *
 *   const nt = require('./ntclient');
 *   const {stax} = nt;
 *   const conn = nt.connect('localhost:50051');            // or $NT_SERVER, else localhost:50051
 *   await conn.health();                                    // 'SERVING'
 *   const arch = stax.serial(stax.Dense(512, {W_std: 1.5, b_std: 0.05}), stax.Relu(), stax.Dense(1));
 *   const x1 = {shape: [3, 2], data: Float64Array.of(1, 2, 3, 4, 5, 6)};
 *   const k = await conn.kernel(arch, x1, null, ['nngp', 'ntk']);
 *   k.nngp.shape;  // [3, 3]
 *   k.nngp.data;   // Float64Array, row-major
 *   conn.close();
 *
 * The protos are loaded at run time from <repo>/proto (nt/v1/service.proto; $NT_PROTO_DIR overrides the
 * directory) and the grpc.health.v1 proto from Debian's grpc-proto package (a built-in copy otherwise).
 * Architectures are nt.v1.Layer messages written as plain objects with the proto's field names, e.g.
 * {dense: {out_dim: 1, W_std: 1.5}}; `stax` builds them. Tensors are {shape: [...], data: Float64Array}
 * (row-major); on the wire they are shape + dtype + raw little-endian bytes (nt/v1/tensor.proto).
 */

const fs = require('fs');
const os = require('os');
const path = require('path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_ADDRESS = 'localhost:50051';
// Kernel tiles and inputs can be large; the gRPC default receive limit is 4 MiB.
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;
const GET_NAMES = ['nngp', 'ntk', 'cov1', 'cov2'];

const LOADER_OPTIONS = {keepCase: true, longs: Number, defaults: true, oneofs: true};
const HEALTH_PROTO_DIR = '/usr/share/grpc-proto';
const HEALTH_PROTO = 'grpc/health/v1/health.proto';

// ---------------------------------------------------------------------------------------------------
// Protos (loaded once, on first use).

function protoDir() {
  return process.env.NT_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');
}

let _nt = null;
let _health = null;

function ntProto() {
  if (_nt === null) {
    const dir = protoDir();
    const file = path.join(dir, 'nt', 'v1', 'service.proto');
    if (!fs.existsSync(file)) {
      throw new Error(`ntclient: ${file} not found (set NT_PROTO_DIR to the repository's proto/ directory)`);
    }
    const definition = protoLoader.loadSync(file, {...LOADER_OPTIONS, includeDirs: [dir]});
    _nt = grpc.loadPackageDefinition(definition).nt.v1;
  }
  return _nt;
}

// grpc/health/v1/health.proto (Check only), for machines without the grpc-proto package.
const HEALTH_JSON = {
  nested: {grpc: {nested: {health: {nested: {v1: {nested: {
    HealthCheckRequest: {fields: {service: {type: 'string', id: 1}}},
    HealthCheckResponse: {
      fields: {status: {type: 'ServingStatus', id: 1}},
      nested: {ServingStatus: {values: {UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3}}},
    },
    Health: {methods: {Check: {requestType: 'HealthCheckRequest', responseType: 'HealthCheckResponse'}}},
  }}}}}}},
};

function healthProto() {
  if (_health === null) {
    const file = path.join(HEALTH_PROTO_DIR, HEALTH_PROTO);
    const definition = fs.existsSync(file)
      ? protoLoader.loadSync(HEALTH_PROTO, {...LOADER_OPTIONS, enums: String, includeDirs: [HEALTH_PROTO_DIR]})
      : protoLoader.fromJSON(HEALTH_JSON, {...LOADER_OPTIONS, enums: String});
    _health = grpc.loadPackageDefinition(definition).grpc.health.v1;
  }
  return _health;
}

// ---------------------------------------------------------------------------------------------------
// Tensors.

// Wire DType values (nt/v1/tensor.proto). DTYPE_UNSPECIFIED is read as FLOAT64.
const DType = Object.freeze({DTYPE_UNSPECIFIED: 0, FLOAT64: 1, FLOAT32: 2, BOOL: 3, INT64: 4});
const DTYPE_NAMES = Object.keys(DType);
const ITEM_SIZE = {0: 8, 1: 8, 2: 4, 3: 1, 4: 8};
const LITTLE_ENDIAN = os.endianness() === 'LE';

function dtypeValue(dtype) {
  if (dtype === undefined || dtype === null) return DType.FLOAT64;
  if (typeof dtype === 'number' && DTYPE_NAMES[dtype] !== undefined) return dtype;
  if (typeof dtype === 'string') {
    const name = dtype.toUpperCase();
    if (name in DType) return DType[name];
  }
  throw new Error(`ntclient: unknown dtype ${JSON.stringify(dtype)} (expected 'float64' or 'float32')`);
}

function numElements(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

// Shape of a nested array of numbers (all rows must have the same length).
function nestedShape(a) {
  const shape = [];
  while (Array.isArray(a)) {
    shape.push(a.length);
    a = a[0];
  }
  return shape;
}

/** A tensor {shape, data: Float64Array} from {shape, data}, a nested array of numbers, or a typed array. */
function asTensor(x, what = 'tensor') {
  if (x === null || x === undefined) throw new Error(`ntclient: ${what} is missing`);
  if (Array.isArray(x)) {
    const shape = nestedShape(x);
    const data = Float64Array.from(x.flat(Infinity));
    if (data.length !== numElements(shape)) throw new Error(`ntclient: ${what} is a ragged nested array`);
    return {shape, data};
  }
  if (ArrayBuffer.isView(x)) return {shape: [x.length], data: Float64Array.from(x)};
  if (!Array.isArray(x.shape)) throw new Error(`ntclient: ${what} needs a shape array`);
  const shape = x.shape.map(Number);
  const data = x.data instanceof Float64Array ? x.data : Float64Array.from(x.data);
  if (data.length !== numElements(shape)) {
    throw new Error(`ntclient: ${what} of shape [${shape}] needs ${numElements(shape)} values, got ${data.length}`);
  }
  return {shape, data};
}

/** nt.v1.Tensor (plain object) of a tensor, as FLOAT64 (default) or FLOAT32 bytes. */
function toTensor(x, dtype = DType.FLOAT64, what = 'tensor') {
  const t = asTensor(x, what);
  const code = dtypeValue(dtype);
  let data;
  if (code === DType.FLOAT64 || code === DType.DTYPE_UNSPECIFIED) {
    data = Buffer.alloc(t.data.length * 8);
    for (let i = 0; i < t.data.length; i++) data.writeDoubleLE(t.data[i], i * 8);
  } else if (code === DType.FLOAT32) {
    data = Buffer.alloc(t.data.length * 4);
    for (let i = 0; i < t.data.length; i++) data.writeFloatLE(t.data[i], i * 4);
  } else {
    throw new Error(`ntclient: toTensor supports float64 and float32, got ${DTYPE_NAMES[code]}`);
  }
  return {shape: t.shape, dtype: code, data};
}

/** {shape, data: Float64Array} of an nt.v1.Tensor (FLOAT64, FLOAT32, BOOL or INT64 bytes). */
function fromTensor(tensor) {
  const shape = (tensor.shape || []).map(Number);
  const code = dtypeValue(tensor.dtype === undefined ? 0 : tensor.dtype);
  const n = numElements(shape);
  const bytes = tensor.data || Buffer.alloc(0);
  const expected = n * ITEM_SIZE[code];
  if (bytes.length !== expected) {
    throw new Error(`ntclient: Tensor of shape [${shape}] and dtype ${DTYPE_NAMES[code]} needs ${expected} ` +
                    `bytes, got ${bytes.length}`);
  }
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
  const data = new Float64Array(n);
  if (code === DType.FLOAT64 || code === DType.DTYPE_UNSPECIFIED) {
    if (LITTLE_ENDIAN && buf.byteOffset % 8 === 0) {
      data.set(new Float64Array(buf.buffer, buf.byteOffset, n));
    } else {
      for (let i = 0; i < n; i++) data[i] = buf.readDoubleLE(i * 8);
    }
  } else if (code === DType.FLOAT32) {
    for (let i = 0; i < n; i++) data[i] = buf.readFloatLE(i * 4);
  } else if (code === DType.BOOL) {
    for (let i = 0; i < n; i++) data[i] = buf[i] ? 1 : 0;
  } else {
    for (let i = 0; i < n; i++) data[i] = Number(buf.readBigInt64LE(i * 8));
  }
  return {shape, data};
}

// ---------------------------------------------------------------------------------------------------
// Tile assembly (KernelHeader, KernelTile..., KernelSummary -> arrays).

// For a mirrored block of trailing shape `trailing`: src index within one (row, col) entry -> dst index
// within the transposed entry. Full-spatial layout (s1, s1', s2, s2', ...): each pair swaps.
function mirrorTrailingPerm(name, trailing, diagonalSpatial) {
  const size = numElements(trailing);
  if (diagonalSpatial || trailing.length === 0) return null;  // Identity.
  if (trailing.length % 2 !== 0 || trailing.some((d, k) => k % 2 === 0 && trailing[k + 1] !== d)) {
    throw new Error(`ntclient: mirrored array '${name}' has trailing shape [${trailing}], which has no ` +
                    "(s, s') axis pairs (full-spatial layout)");
  }
  const rank = trailing.length;
  const strides = new Array(rank);
  let s = 1;
  for (let k = rank - 1; k >= 0; k--) {
    strides[k] = s;
    s *= trailing[k];
  }
  const perm = new Int32Array(size);
  const idx = new Array(rank).fill(0);
  for (let src = 0; src < size; src++) {
    let dst = 0;
    for (let k = 0; k < rank; k += 2) dst += idx[k + 1] * strides[k] + idx[k] * strides[k + 1];
    perm[src] = dst;
    for (let k = rank - 1; k >= 0; k--) {  // Next multi-index.
      if (++idx[k] < trailing[k]) break;
      idx[k] = 0;
    }
  }
  return perm;
}

/** Builds the full arrays from a ComputeKernel stream; feed it every KernelResponse, then call finish(). */
class TileAssembler {
  constructor() {
    this.header = null;
    this.summary = null;
    this.arrays = {};  // name -> {shape, data: Float64Array}, in header order.
    this._infos = {};
    this._numTiles = 0;
    this._perms = {};
  }

  consume(response) {
    const kind = response.payload || (response.header ? 'header' : response.tile ? 'tile' : 'summary');
    if (kind === 'header') this._onHeader(response.header);
    else if (kind === 'tile') this._onTile(response.tile);
    else if (kind === 'summary') this.summary = response.summary;
  }

  finish() {
    if (this.header === null) throw new Error('ntclient: ComputeKernel stream ended without a header');
    if (this.summary === null) throw new Error('ntclient: ComputeKernel stream ended without a summary');
    const announced = Number(this.header.num_tiles);
    if (announced && this._numTiles !== announced) {
      throw new Error(`ntclient: ComputeKernel sent ${this._numTiles} tiles, the header announced ${announced}`);
    }
    return this.arrays;
  }

  _onHeader(header) {
    if (this.header !== null) throw new Error('ntclient: ComputeKernel stream has two headers');
    this.header = header;
    for (const info of header.arrays) {
      const shape = info.shape.map(Number);
      this._infos[info.name] = {shape, tiled: Number(info.tiled_axes)};
      this.arrays[info.name] = {shape, data: new Float64Array(numElements(shape))};
    }
  }

  _onTile(tile) {
    if (this.header === null) throw new Error('ntclient: ComputeKernel sent a tile before the header');
    const out = this.arrays[tile.name];
    if (out === undefined) throw new Error(`ntclient: ComputeKernel sent a tile of unannounced array '${tile.name}'`);
    const {shape, tiled} = this._infos[tile.name];
    if (tile.mirror && tiled !== 2) {
      throw new Error(`ntclient: ComputeKernel sent a mirrored tile of '${tile.name}', which has ${tiled} tiled axes`);
    }
    this._numTiles++;
    const block = fromTensor(tile.block);
    const r = Number(tile.row_offset);
    const c = Number(tile.col_offset);
    const trailing = shape.slice(tiled);
    const blockTrailing = block.shape.slice(tiled);
    if (block.shape.length !== shape.length || blockTrailing.some((d, k) => d !== trailing[k])) {
      throw new Error(`ntclient: tile of '${tile.name}' has shape [${block.shape}], array is [${shape}]`);
    }
    const t = numElements(trailing);
    if (tiled === 0) {
      out.data.set(block.data);
      return;
    }
    const rows = block.shape[0];
    if (r < 0 || r + rows > shape[0]) throw new Error(`ntclient: tile of '${tile.name}' rows out of range`);
    if (tiled === 1) {
      out.data.set(block.data, r * t);
      return;
    }
    const cols = block.shape[1];
    if (c < 0 || c + cols > shape[1]) throw new Error(`ntclient: tile of '${tile.name}' columns out of range`);
    const n2 = shape[1];
    for (let i = 0; i < rows; i++) {
      const src = block.data.subarray(i * cols * t, (i + 1) * cols * t);
      out.data.set(src, ((r + i) * n2 + c) * t);
    }
    if (!tile.mirror) return;
    // The transposed position: out[c + j, r + i] = block[i, j] with every (s, s') pair swapped.
    if (shape[0] !== shape[1]) throw new Error(`ntclient: mirrored array '${tile.name}' is not square`);
    if (!(tile.name in this._perms)) {
      this._perms[tile.name] = mirrorTrailingPerm(tile.name, trailing, Boolean(this.header.diagonal_spatial));
    }
    const perm = this._perms[tile.name];
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const src = (i * cols + j) * t;
        const dst = ((c + j) * n2 + (r + i)) * t;
        if (perm === null) {
          out.data.set(block.data.subarray(src, src + t), dst);
        } else {
          for (let k = 0; k < t; k++) out.data[dst + perm[k]] = block.data[src + k];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Errors.

/** An Error with the gRPC status `code`, its name `codeName` and the server's `details`. */
function rpcError(err) {
  if (!err || typeof err.code !== 'number') return err;
  const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || String(err.code);
  const details = err.details !== undefined ? err.details : err.message;
  const e = new Error(`${codeName}: ${details}`);
  e.code = err.code;
  e.codeName = codeName;
  e.details = details;
  e.metadata = err.metadata;
  return e;
}

// ---------------------------------------------------------------------------------------------------
// Requests.

function parseGet(get) {
  if (get === null || get === undefined) return [];
  const names = typeof get === 'string' ? [get] : Array.from(get);
  if (names.length === 0) throw new Error('ntclient: get must not be empty (null means all arrays)');
  return names.map((n) => String(n).toLowerCase());
}

function kernelRequest(arch, x1, x2, get, options = {}) {
  const request = {
    architecture: arch,
    x1: toTensor(x1, DType.FLOAT64, 'x1'),
    get: parseGet(get),
    output_dtype: dtypeValue(options.outputDtype),
    tile_size: options.tileSize || 0,
  };
  if (x2 !== null && x2 !== undefined) request.x2 = toTensor(x2, DType.FLOAT64, 'x2');
  if (options.diagonalBatch !== undefined && options.diagonalBatch !== null) {
    request.diagonal_batch = Boolean(options.diagonalBatch);
  }
  if (options.diagonalSpatial !== undefined && options.diagonalSpatial !== null) {
    request.diagonal_spatial = Boolean(options.diagonalSpatial);
  }
  if (options.maskConstant !== undefined && options.maskConstant !== null) {
    request.mask_constant = Number(options.maskConstant);
  }
  if (options.tileBegin) request.tile_begin = options.tileBegin;
  if (options.tileEnd) request.tile_end = options.tileEnd;
  return request;
}

// ---------------------------------------------------------------------------------------------------
// Connection.

class Connection {
  /**
   * @param {string} [address] 'host:port'; default $NT_SERVER, else localhost:50051.
   * @param {{token?: string, rootCerts?: Buffer}} [options] token (default $NT_TOKEN) is sent as
   *   `authorization: Bearer <token>` on every call; rootCerts (PEM; default the file $NT_TLS_CA) selects TLS.
   */
  constructor(address, options = {}) {
    this.address = address || process.env.NT_SERVER || DEFAULT_ADDRESS;
    this.token = options.token !== undefined ? options.token : (process.env.NT_TOKEN || null);
    let rootCerts = options.rootCerts || null;
    if (!rootCerts && process.env.NT_TLS_CA) rootCerts = fs.readFileSync(process.env.NT_TLS_CA);
    this.tls = Boolean(rootCerts);
    const credentials = rootCerts ? grpc.credentials.createSsl(rootCerts) : grpc.credentials.createInsecure();
    const channelOptions = {
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    };
    const nt = ntProto();
    this.stub = new nt.KernelService(this.address, credentials, channelOptions);
    const health = healthProto();
    // Shares the channel of the KernelService stub.
    this.healthStub = new health.Health(this.address, null, {channelOverride: this.stub.getChannel()});
  }

  _metadata() {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  _callOptions(timeout) {
    return timeout ? {deadline: new Date(Date.now() + timeout * 1000)} : {};
  }

  _unary(stub, method, request, timeout) {
    return new Promise((resolve, reject) => {
      stub[method](request, this._metadata(), this._callOptions(timeout), (err, response) => {
        if (err) reject(rpcError(err));
        else resolve(response);
      });
    });
  }

  /** The grpc.health.v1 serving status name, e.g. 'SERVING'. */
  async health(service = '', {timeout = 10} = {}) {
    const response = await this._unary(this.healthStub, 'Check', {service}, timeout);
    return response.status;
  }

  /** DescribeResponse: what ComputeKernel would do for these input shapes (x2Shape null: x2 = None). */
  describe(arch, x1Shape, x2Shape = null, get = null, options = {}) {
    const request = {
      architecture: arch,
      x1_shape: Array.from(x1Shape),
      x2_shape: x2Shape ? Array.from(x2Shape) : [],
      get: parseGet(get),
      tile_size: options.tileSize || 0,
    };
    if (options.diagonalBatch !== undefined && options.diagonalBatch !== null) {
      request.diagonal_batch = Boolean(options.diagonalBatch);
    }
    if (options.diagonalSpatial !== undefined && options.diagonalSpatial !== null) {
      request.diagonal_spatial = Boolean(options.diagonalSpatial);
    }
    return this._unary(this.stub, 'Describe', request, options.timeout);
  }

  /**
   * kernel_fn(x1, x2, get, ...) on the server (ComputeKernel), assembled from the streamed tiles.
   *
   * @param arch an nt.v1.Layer object (see `stax`).
   * @param x1 {shape, data} (or a nested array); x2 the same, or null for x2 = None.
   * @param get 'nngp', ['nngp', 'ntk', ...] or null (every array).
   * @param options {outputDtype: 'float64'|'float32', tileSize, diagonalBatch, diagonalSpatial,
   *   maskConstant, tileBegin, tileEnd, timeout (seconds)}.
   * @returns Promise of {nngp: {shape, data: Float64Array}, ntk, cov1, cov2} (the arrays the server
   *   returned), with non-enumerable `header` and `summary` (the KernelHeader / KernelSummary messages).
   */
  kernel(arch, x1, x2 = null, get = null, options = {}) {
    let request;
    try {
      request = kernelRequest(arch, x1, x2, get, options);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      const assembler = new TileAssembler();
      let failed = false;
      const call = this.stub.ComputeKernel(request, this._metadata(), this._callOptions(options.timeout));
      call.on('data', (response) => {
        if (failed) return;
        try {
          assembler.consume(response);
        } catch (e) {
          failed = true;
          call.cancel();
          reject(e);
        }
      });
      call.on('error', (err) => {
        if (failed) return;
        failed = true;
        reject(rpcError(err));
      });
      call.on('end', () => {
        if (failed) return;
        try {
          const arrays = assembler.finish();
          Object.defineProperty(arrays, 'header', {value: assembler.header, enumerable: false});
          Object.defineProperty(arrays, 'summary', {value: assembler.summary, enumerable: false});
          resolve(arrays);
        } catch (e) {
          reject(e);
        }
      });
    });
  }

  close() {
    this.stub.close();
  }
}

let _default = null;

/** Opens a connection (address or $NT_SERVER or localhost:50051) and makes it the default one. */
function connect(address, options = {}) {
  _default = new Connection(address, options);
  return _default;
}

function defaultConnection() {
  if (_default === null) connect();
  return _default;
}

// ---------------------------------------------------------------------------------------------------
// stax: nt.v1.Layer objects. Only the arguments passed are set, so the rest stay upstream's defaults.

function pick(args, names, layer) {
  const out = {};
  for (const [key, value] of Object.entries(args || {})) {
    if (!names.includes(key)) {
      throw new Error(`ntclient.stax.${layer}: unknown argument '${key}' (expected one of ${names.join(', ')})`);
    }
    if (value !== undefined && value !== null) out[key] = value;
  }
  return out;
}

const DENSE_ARGS = ['W_std', 'b_std', 'batch_axis', 'channel_axis', 'parameterization', 's'];
const CONV_ARGS = ['strides', 'padding', 'W_std', 'b_std', 'dimension_numbers', 'parameterization', 's'];
const AXES_ARGS = ['batch_axis', 'channel_axis'];

const stax = {
  /** serial(...layers). */
  serial: (...layers) => ({serial: {layers}}),
  /** parallel(...layers). */
  parallel: (...layers) => ({parallel: {layers}}),
  /** repeat(layer, n). */
  repeat: (layer, n) => ({repeat: {layer, n}}),
  /** Dense(out_dim, {W_std, b_std, batch_axis, channel_axis, parameterization, s}). */
  Dense: (outDim, args = {}) => ({dense: {out_dim: outDim, ...pick(args, DENSE_ARGS, 'Dense')}}),
  /** Conv(out_chan, filter_shape, {strides, padding: 'VALID'|'SAME'|'CIRCULAR', W_std, b_std, ...}). */
  Conv: (outChan, filterShape, args = {}) =>
    ({conv: {out_chan: outChan, filter_shape: Array.from(filterShape), ...pick(args, CONV_ARGS, 'Conv')}}),
  Relu: (args = {}) => ({relu: pick(args, ['do_stabilize'], 'Relu')}),
  /** Erf({a, b, c}): a * erf(b * x) + c. */
  Erf: (args = {}) => ({erf: pick(args, ['a', 'b', 'c'], 'Erf')}),
  Identity: () => ({identity: {}}),
  Flatten: (args = {}) => ({flatten: pick(args, ['batch_axis', 'batch_axis_out'], 'Flatten')}),
  GlobalAvgPool: (args = {}) => ({global_avg_pool: pick(args, AXES_ARGS, 'GlobalAvgPool')}),
  GlobalSumPool: (args = {}) => ({global_sum_pool: pick(args, AXES_ARGS, 'GlobalSumPool')}),
};

module.exports = {
  Connection,
  connect,
  defaultConnection,
  health: (options) => defaultConnection().health('', options),
  describe: (...args) => defaultConnection().describe(...args),
  kernel: (...args) => defaultConnection().kernel(...args),
  stax,
  DType,
  GET_NAMES,
  TileAssembler,
  toTensor,
  fromTensor,
  asTensor,
  /** The loaded gRPC packages: {nt: nt.v1 (KernelService, ...), health: grpc.health.v1 (Health)}. */
  protos: () => ({nt: ntProto(), health: healthProto()}),
  grpc,
};
