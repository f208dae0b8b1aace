// Reading a results root (docs/FORMAT.md, schema version 3) over HTTP: JSON with fetch, Parquet with
// hyparquet over range requests. Nothing here reads a file whose size grows with the number of
// pairs: startup reads manifest.json and a few columns of classes.parquet; picking an original reads
// its pair_index partition; a pair reads the footers and its own row groups of its nodes/edges (then
// causal) files; the pair explorer reads pages of rankings/ rows; the class overview reads one row
// group of overview/success.parquet; the neuron atlas reads atlas/neurons.parquet (one row per
// neuron) and the per-class statistics columns of classes.parquet. Every byte fetched is counted
// (window.__bluff.traffic) so tests and the benchmark can check those costs.
import { asyncBufferFromUrl, cachedAsyncBuffer, parquetMetadataAsync, parquetReadObjects } from "hyparquet";
import type { AsyncBuffer, Compressors, FileMetaData } from "hyparquet";
import { decompress as zstdDecompress } from "fzstd";

export const SCHEMA_VERSION = 3;

export interface LayerInfo {
  name: string;
  channels: number;
}

export interface Landing {
  original: number;
  target: number;
  /** 1-based index into strengths (the viewer's strength index) */
  strength: number;
}

export interface Manifest {
  schema_version: number;
  model: { name: string; input_space?: string };
  layers: LayerInfo[];
  attack: { method: string; steps?: number };
  strengths: number[];
  input_space?: string;
  k: number;
  classes?: number;
  pairs_total?: number;
  targets_per_file?: number;
  causal?: boolean;
  finished?: string | null;
  landing?: Landing;
}

export interface ClassInfo {
  id: number;
  wnid: string;
  name: string;
  /** computed pairs with this class as the original (0: the original picker marks it "not computed") */
  nAsOriginal: number;
}

export interface PairRow {
  original: number;
  target: number;
  nImages: number;
  nSuccess: number[];
  successRate: number[];
  nNodes: number;
  nEdges: number;
  nExploited: number;
  /** index of the pair's row group in its nodes/edges/causal files */
  rowGroup: number;
  /** j of the `original=<o>/part-<j>.parquet` files holding this pair */
  part: number;
}

export type Role = "original" | "both" | "target" | "exploited";
export const ROLES: Role[] = ["original", "both", "target", "exploited"];

export interface NodeRow {
  id: string; // `${layer}-${channel}`
  layer: string;
  layerIndex: number;
  channel: number;
  role: Role;
  /** activation per strength index: [original (benign, strength 0), attacked@eps1, ...] */
  act: number[];
  target: number; // importance on benign target images
  /** exploited_mask: bit i set when exploited at strength i+1 */
  exploitedMask: number;
  /** per strength (no benign entry): fraction of successful attacks undone by patching this neuron alone */
  effect: number[];
}

export interface EdgeRow {
  src: string;
  dst: string;
  srcLayerIndex: number;
  /** influence per strength index: [benign original, attacked@eps1, ...] */
  inf: number[];
  infTarget: number;
}

export interface PairData {
  original: number;
  target: number;
  nodes: NodeRow[];
  /** `inf[s]` is NaN until strength index s is read (see `loadPair`'s `first`, then `loadRest`) */
  edges: EdgeRow[];
  /** Read the edge influences of the strengths `loadPair` left out (in place); false when there were none. */
  loadRest: () => Promise<boolean>;
  /** every strength's edge influences are read (the graph says data-state="partial" until then) */
  complete: boolean;
}

/** One row of causal/ (docs/FORMAT.md): a set patched at a strength, its recovery and controls. */
export interface CausalRow {
  strength: number; // 0-based into manifest.strengths
  layer: string; // a layer name, or "all"
  set: string; // exploited, exploited_union, top_original_target, top_delta, neuron:<channel>
  nNeurons: number;
  nImages: number; // held-out images patched
  recovery: number; // mean R
  restored: number;
  defused: number;
  nullMean: number;
  nullQ05: number;
  nullQ95: number;
  nullPercentile: number;
  nullP: number;
  draws: number;
  matchedMean: number;
  matchedPercentile: number;
  noising: number;
  noisingNullMean: number;
  noisingPercentile: number;
}

/** One row of causal_curve/: R after patching the first k channels of an order. */
export interface CurveRow {
  strength: number;
  layer: string;
  order: string; // exploited, delta, random
  k: number[];
  recovery: number[];
  q05: number[];
  q95: number[];
  auc: number;
  k50: number;
}

export interface CausalData {
  rows: CausalRow[];
  curves: CurveRow[];
}

export interface NeuronAssets {
  featureVis?: string;
  patches: string[];
}

export interface RankingRow {
  original: number;
  target: number;
  value: number;
}

/** An error that names the file (relative to the root) that could not be used. */
export class DataError extends Error {
  constructor(
    public readonly file: string,
    message: string,
  ) {
    super(message);
  }
}

/** The root was written by another schema version of bluff_ray. */
export class VersionError extends DataError {}

export interface Traffic {
  requests: number;
  bytes: number;
  /** bytes received per file, relative to the results root */
  byFile: Record<string, number>;
  /** every request: file, Range header sent, HTTP status, bytes received, cache mode */
  log: { file: string; range: string; status: number; bytes: number; cache: string }[];
}

export const traffic: Traffic = { requests: 0, bytes: 0, byFile: {}, log: [] };

function joinUrl(root: string, rel: string): string {
  return root.endsWith("/") ? root + rel : root + "/" + rel;
}

async function countedFetch(url: string, rel: string, init: RequestInit): Promise<Response> {
  traffic.requests += 1;
  try {
    return await fetch(url, init);
  } catch (e) {
    throw new DataError(rel, `network error (${(e as Error).message}) at ${url}`);
  }
}

async function bodyBytes(res: Response, rel: string, range = "", cache = "default"): Promise<ArrayBuffer> {
  const buf = await res.arrayBuffer();
  traffic.bytes += buf.byteLength;
  traffic.byFile[rel] = (traffic.byFile[rel] ?? 0) + buf.byteLength;
  if (traffic.log.length < 5000) traffic.log.push({ file: rel, range, status: res.status, bytes: buf.byteLength, cache });
  return buf;
}

/**
 * Bytes of the suffix request that reads a Parquet footer: 16 KiB for the nodes/edges/causal
 * partition files (layout.VIEWER_TAIL_BYTES: their writer keeps footers under it), 8 KiB for the
 * single-row-group global files (classes, pair_index, overview, neurons/index), whose
 * footers are a few KB whatever the number of classes; 16 KiB for rankings/, whose page indexes
 * (about 8 KB at 999,000 rows) sit just before the footer. A larger footer costs one more request.
 */
export const TAIL = 16 * 1024;
export const SMALL_TAIL = 8 * 1024;
/** edges files: a column chunk per condition and row group (layout.EDGES_TAIL_BYTES) */
export const EDGES_TAIL = 32 * 1024;
const tailFor = (rel: string) => (rel.startsWith("edges/") ? EDGES_TAIL : /^(nodes|causal|causal_curve|rankings)\//.test(rel) ? TAIL : SMALL_TAIL);

type Want = { suffix: number } | { start: number; end: number };
type Ranged = { status: number; headers: Headers; body: ArrayBuffer; size: number };

/** What a consistent answer to `bytes=a-b` (end exclusive: b + 1) or `bytes=-n` must cover. */
function wanted(range: string): Want {
  const m = /^bytes=(\d*)-(\d*)$/.exec(range);
  if (!m) throw new Error(`unexpected Range ${range}`);
  return m[1] === "" ? { suffix: Number(m[2]) } : { start: Number(m[1]), end: m[2] === "" ? Infinity : Number(m[2]) + 1 };
}

/**
 * The file size a response states, or why it is not the bytes asked for. A 200 is the whole file (a
 * server without range support). A 206 must carry a readable Content-Range (else CORS hides it) for
 * the bytes asked for (a suffix ends at the file's last byte; a bounded range starts and ends where
 * asked, in a file of the size already known) and a body of that length. These are the checks that
 * catch a browser cache answering with another range, or with bytes of a file since rewritten.
 */
function checkRange(rel: string, res: Response, body: ArrayBuffer, want: Want, known: number): { size: number } | { why: string } {
  if (res.status === 200) {
    if ("start" in want && known && body.byteLength !== known)
      return { why: `a 200 response of ${body.byteLength} bytes to a range request on a ${known}-byte file` };
    return { size: body.byteLength };
  }
  const cr = res.headers.get("Content-Range");
  if (cr === null) throw new DataError(rel, "range response without a readable Content-Range header (check the CORS ExposeHeaders rule)");
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+)\s*$/i.exec(cr);
  if (!m) return { why: `unreadable Content-Range "${cr}"` };
  const [a, b, size] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (body.byteLength !== b - a + 1) return { why: `Content-Range "${cr}" but ${body.byteLength} bytes received` };
  if ("suffix" in want && b !== size - 1)
    return { why: `Content-Range "${cr}" does not end at the file's last byte (a suffix range was asked for)` };
  if ("start" in want && (a !== want.start || b !== Math.min(want.end, size) - 1 || (known && size !== known)))
    return { why: `Content-Range "${cr}" for a request of bytes ${want.start}-${want.end - 1}` };
  return { size };
}

/** GET `range` of a file, checked (checkRange); an inconsistent answer is retried once with `cache: "no-store"`. */
async function checkedRange(url: string, rel: string, range: string, known = 0): Promise<Ranged> {
  const want = wanted(range);
  let why = "";
  for (const cache of ["default", "no-store"] as RequestCache[]) {
    const res = await countedFetch(url, rel, { headers: { Range: range }, cache });
    if (res.status === 404 || res.status === 403 || res.status === 410) throw new DataError(rel, `not found (HTTP ${res.status})`);
    if (res.status === 416 && "suffix" in want) throw new DataError(rel, "empty file (0 bytes), not Parquet");
    if (res.status !== 200 && res.status !== 206) throw new DataError(rel, `HTTP ${res.status} for ${range}`);
    const body = await bodyBytes(res, rel, range, cache);
    const c = checkRange(rel, res, body, want, known);
    if ("size" in c) return { status: res.status, headers: res.headers, body, size: c.size };
    why = c.why;
    console.warn(`${rel}: inconsistent response to ${range} (${why})${cache === "default" ? ", retrying without the HTTP cache" : ""}`);
  }
  throw new DataError(rel, `inconsistent response to the byte range request ${range} (${why}), also without the HTTP cache`);
}

/**
 * A range-read Parquet file on hyparquet's buffer helpers. One suffix request (`Range: bytes=-16384`)
 * returns the footer and, in Content-Range, the file size, so no HEAD is needed; its bytes are kept
 * and a slice reaching into them fetches only the bytes before them. Other slices go through
 * `asyncBufferFromUrl` (a 200, from a server that ignores Range, is the whole file, reused) with
 * `checkedRange` as its fetch, cached by `cachedAsyncBuffer` (a failed read is forgotten, so it can
 * be retried). `held` is the bytes these caches keep (reported through `onHold` as they change);
 * `drop()` forgets them all, after which the file still reads, fetching every slice and keeping none.
 */
export interface RangeFile extends AsyncBuffer {
  readonly held: number;
  drop(): void;
}

export async function openRangeFile(url: string, rel: string, tail = TAIL, onHold: (delta: number) => void = () => undefined): Promise<RangeFile> {
  const first = await checkedRange(url, rel, `bytes=-${tail}`);
  const size = first.size;
  let tailBuf: ArrayBuffer | null = first.body;
  const tailStart = size - first.body.byteLength;
  let held = 0;
  const hold = (n: number) => {
    held += n;
    onHold(n);
  };
  let wholeHeld = false;
  let dropped = false;
  const fetchChecked = async (_input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const r = await checkedRange(url, rel, new Headers(init?.headers).get("Range") ?? "", size);
    // a 200 is the whole file, which asyncBufferFromUrl then keeps (and slices) for every later read
    if (r.status === 200 && !dropped && !wholeHeld) {
      wholeHeld = true;
      hold(size);
    }
    return new Response(r.body, { status: r.status, headers: r.headers });
  };
  const uncached = () => asyncBufferFromUrl({ url, byteLength: size, fetch: fetchChecked });
  const fresh = async () => cachedAsyncBuffer(await uncached(), { minSize: 0 });
  let remote: AsyncBuffer | null = await fresh();
  // Ranges already fetched: hyparquet coalesces neighbouring column chunks into one read, and its
  // cache only answers the same range again, so a later read of a chunk inside one is served here.
  // They are the same ArrayBuffers cachedAsyncBuffer keeps, so each is counted once.
  let ranges: { start: number; buf: ArrayBuffer }[] = [];
  const forgetWhole = () => {
    if (wholeHeld) hold(-size);
    wholeHeld = false;
  };
  const read = async (start: number, end: number): Promise<ArrayBuffer> => {
    if (dropped) return (await uncached()).slice(start, end);
    const hit = ranges.find((h) => h.start <= start && end <= h.start + h.buf.byteLength);
    if (hit) return hit.buf.slice(start - hit.start, end - hit.start);
    try {
      const buf = await remote!.slice(start, end);
      if (!dropped && !ranges.some((h) => h.buf === buf)) {
        ranges.push({ start, buf });
        hold(buf.byteLength);
      }
      return buf;
    } catch (e) {
      if (!dropped) {
        forgetWhole();
        const r = await fresh();
        if (!dropped) remote = r;
      }
      throw e;
    }
  };
  hold(first.body.byteLength);
  return {
    byteLength: size,
    get held() {
      return held;
    },
    drop() {
      if (dropped) return;
      dropped = true;
      tailBuf = null;
      remote = null;
      ranges = [];
      wholeHeld = false;
      hold(-held);
    },
    async slice(start: number, end?: number): Promise<ArrayBuffer> {
      const stop = Math.min(end ?? size, size);
      if (stop <= start) return new ArrayBuffer(0);
      if (!tailBuf) return read(start, stop);
      if (start >= tailStart) return tailBuf.slice(start - tailStart, stop - tailStart);
      if (stop <= tailStart) return read(start, stop);
      const tb = tailBuf;
      const head = await read(start, tailStart);
      const out = new Uint8Array(stop - start);
      out.set(new Uint8Array(head), 0);
      out.set(new Uint8Array(tb, 0, stop - tailStart), head.byteLength);
      return out.buffer;
    },
  };
}

interface OpenFile {
  file: RangeFile;
  meta: FileMetaData;
}

/**
 * The bytes that open Parquet files keep (their footer suffixes and the ranges read, `RangeFile.held`)
 * and the most they may keep: past `budget`, the least recently used files are closed (`evictions`
 * counts them), to be opened again (footer and all) when next read. `peak`: the most held after a
 * trim. Browsing pairs opens a few files per pair (nodes, edges, causal, causal_curve), so without a
 * bound a long session would keep every byte it ever read. Tests lower `budget` (window.__bluff.fileCache).
 */
export const fileCache = { budget: 64 * 1024 * 1024, held: 0, peak: 0, evictions: 0 };

interface FileEntry {
  p: Promise<OpenFile>;
  /** set once the footer is read: from then on the file can be evicted */
  buf?: RangeFile;
}
/** Parquet files opened, least recently used first (footers are read once per opening and reused). */
const files = new Map<string, FileEntry>();

function holdBytes(delta: number): void {
  fileCache.held += delta;
  if (delta > 0) trimFiles();
}

/** Close least recently used files until the bytes held fit the budget (files still opening are skipped). */
function trimFiles(): void {
  for (const [key, e] of files) {
    if (fileCache.held <= fileCache.budget) break;
    if (!e.buf) continue;
    files.delete(key);
    e.buf.drop(); // a read in progress on it still completes, fetching what it needs
    fileCache.evictions += 1;
  }
  fileCache.peak = Math.max(fileCache.peak, fileCache.held);
}

function openParquet(root: string, rel: string): Promise<OpenFile> {
  const key = joinUrl(root, rel);
  const e = files.get(key);
  if (e) {
    files.delete(key); // most recently used last
    files.set(key, e);
    return e.p;
  }
  const entry = {} as FileEntry;
  entry.p = (async () => {
    const tail = tailFor(rel);
    const file = await openRangeFile(key, rel, tail, holdBytes);
    let meta: FileMetaData;
    try {
      meta = await parquetMetadataAsync(file, { initialFetchSize: tail });
    } catch (err) {
      file.drop();
      if (err instanceof DataError) throw err;
      throw new DataError(rel, `not a readable Parquet file (${(err as Error).message})`);
    }
    if (files.get(key) === entry) {
      entry.buf = file;
      trimFiles();
    } else file.drop(); // evicted or replaced while opening: keep nothing
    return { file, meta };
  })();
  entry.p.catch(() => {
    if (files.get(key) === entry) files.delete(key); // allow a retry after a failure
  });
  files.set(key, entry);
  return entry.p;
}

function checkColumns(rel: string, meta: FileMetaData, needed: string[]): void {
  const top = new Set(meta.schema.slice(1).map((s) => s.name));
  const missing = needed.filter((c) => !top.has(c));
  if (missing.length) throw new DataError(rel, `missing column(s) ${missing.join(", ")} (docs/FORMAT.md)`);
}

export function kvMetadata(meta: FileMetaData, key: string): string | undefined {
  return meta.key_value_metadata?.find((kv) => kv.key === key)?.value ?? undefined;
}

interface ReadOptions {
  rowGroup?: number;
  rowStart?: number;
  rowEnd?: number;
  useOffsetIndex?: boolean;
  utf8?: boolean;
}

/** Edge influences are zstd-compressed (docs/FORMAT.md, Precision); everything else is snappy. */
const compressors: Compressors = { ZSTD: (input, outputLength) => zstdDecompress(input, new Uint8Array(outputLength)) };

async function readRows(root: string, rel: string, columns: string[], opt: ReadOptions = {}): Promise<Record<string, unknown>[]> {
  const { file, meta } = await openParquet(root, rel);
  checkColumns(rel, meta, columns);
  let rowStart = opt.rowStart ?? 0;
  let rowEnd = opt.rowEnd ?? Number(meta.num_rows);
  if (opt.rowGroup !== undefined) {
    const rg = opt.rowGroup;
    if (!(rg >= 0 && rg < meta.row_groups.length))
      throw new DataError(rel, `row group ${rg} does not exist (the file has ${meta.row_groups.length})`);
    rowStart = 0;
    for (let i = 0; i < rg; i++) rowStart += Number(meta.row_groups[i].num_rows);
    rowEnd = rowStart + Number(meta.row_groups[rg].num_rows);
  }
  if (rowEnd <= rowStart) return [];
  try {
    return (await parquetReadObjects({
      file,
      metadata: meta,
      columns,
      rowStart,
      rowEnd,
      useOffsetIndex: opt.useOffsetIndex,
      utf8: opt.utf8,
      compressors,
    })) as Record<string, unknown>[];
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(rel, `cannot decode (${(e as Error).message})`);
  }
}

async function fetchJson(root: string, rel: string): Promise<unknown> {
  const url = joinUrl(root, rel);
  const res = await countedFetch(url, rel, { cache: "no-cache" });
  if (!res.ok) throw new DataError(rel, `HTTP ${res.status} at ${url}`);
  const buf = await bodyBytes(res, rel);
  try {
    return JSON.parse(new TextDecoder().decode(buf));
  } catch (e) {
    throw new DataError(rel, `invalid JSON (${(e as Error).message})`);
  }
}

const num = (v: unknown): number => (typeof v === "bigint" ? Number(v) : v === null || v === undefined ? NaN : Number(v));
const numList = (v: unknown): number[] => (Array.isArray(v) ? v.map(num) : []);

// --- paths (docs/FORMAT.md; bluff_ray/layout.py) ---------------------------------------------------

export const paths = {
  manifest: "manifest.json",
  classes: "classes.parquet",
  overview: "overview/success.parquet",
  atlas: "atlas/neurons.parquet",
  assetIndex: "neurons/index.parquet",
  pairIndex: (o: number) => `pair_index/original=${o}/part-0.parquet`,
  part: (kind: "nodes" | "edges" | "causal" | "causal_curve", o: number, j: number) => `${kind}/original=${o}/part-${j}.parquet`,
  ranking: (key: string) => `rankings/${key}.parquet`,
};

/** The ranking key of a sort (docs/FORMAT.md rankings/): success at strength i (0-based), or exploited. */
export const rankingKey = (by: "success" | "exploited", sIndex: number) => (by === "exploited" ? "exploited" : `success-${sIndex}`);

// --- manifest and classes ---------------------------------------------------------------------------

export async function loadManifest(root: string): Promise<Manifest> {
  const m = (await fetchJson(root, paths.manifest)) as Manifest;
  if (!m || typeof m !== "object" || Array.isArray(m)) throw new DataError(paths.manifest, "not a JSON object");
  const v = m.schema_version;
  if (v !== SCHEMA_VERSION) {
    if (typeof v === "number" && v > SCHEMA_VERSION)
      throw new VersionError(
        paths.manifest,
        `schema_version ${v}: written by a newer bluff_ray than this viewer (it reads schema version ${SCHEMA_VERSION}). Open it with the viewer of the bluff_ray that wrote it.`,
      );
    throw new VersionError(
      paths.manifest,
      `this results root was written by an older bluff_ray (results schema version ${typeof v === "number" ? v : "1, or none"}); ` +
        `this viewer reads schema version ${SCHEMA_VERSION}. Re-run it with this version of bluff_ray: \`bluff run\` into a new root, ` +
        "or the same command with `--overwrite` to replace these results.",
    );
  }
  if (!Array.isArray(m.layers) || m.layers.length === 0) throw new DataError(paths.manifest, "no layers");
  if (!Array.isArray(m.strengths) || m.strengths.length === 0) throw new DataError(paths.manifest, "no strengths");
  return m;
}

/** classes.parquet: only the columns the viewer needs (rows are in class-id order, FORMAT). */
export async function loadClasses(root: string, manifest: Manifest): Promise<ClassInfo[]> {
  const rows = await readRows(root, paths.classes, ["wnid", "name", "n_as_original"]);
  if (manifest.classes !== undefined && rows.length !== manifest.classes)
    throw new DataError(paths.classes, `has ${rows.length} rows, manifest.json says ${manifest.classes} classes`);
  return rows.map((r, i) => ({
    id: i,
    wnid: String(r.wnid ?? ""),
    name: String(r.name ?? i),
    nAsOriginal: num(r.n_as_original),
  }));
}

// --- pair index partitions ----------------------------------------------------------------------------

const PAIR_INDEX_COLUMNS = ["target", "n_images", "n_success", "success_rate", "n_nodes", "n_edges", "n_exploited", "row_group", "part"];
const partitions = new Map<number, Promise<PairRow[]>>();
const partitionsLoaded = new Map<number, PairRow[]>();

/** Every computed pair of original o (its pair_index partition, sorted by target), read once. */
export function loadPartition(root: string, original: number): Promise<PairRow[]> {
  let p = partitions.get(original);
  if (!p) {
    const rel = paths.pairIndex(original);
    p = readRows(root, rel, PAIR_INDEX_COLUMNS).then((rows) => {
      const out = rows.map((r) => ({
        original,
        target: num(r.target),
        nImages: num(r.n_images),
        nSuccess: numList(r.n_success),
        successRate: numList(r.success_rate),
        nNodes: num(r.n_nodes),
        nEdges: num(r.n_edges),
        nExploited: num(r.n_exploited),
        rowGroup: num(r.row_group),
        part: num(r.part),
      }));
      out.sort((a, b) => a.target - b.target);
      partitionsLoaded.set(original, out);
      return out;
    });
    p.catch(() => partitions.delete(original));
    partitions.set(original, p);
  }
  return p;
}

/** The partition of o if it has been read already (no request). */
export function loadedPartition(original: number): PairRow[] | undefined {
  return partitionsLoaded.get(original);
}

export async function findPair(root: string, original: number, target: number): Promise<PairRow | undefined> {
  const rows = await loadPartition(root, original);
  return rows.find((p) => p.target === target);
}

// --- one pair -------------------------------------------------------------------------------------------

const ROLE_SET = new Set<string>(ROLES);

/** The edges column of strength index s (0 = benign original, i >= 1 = attacked at strengths[i-1]). */
export const influenceColumn = (s: number) => (s === 0 ? "influence_original" : `influence_attacked_${s - 1}`);
const EDGE_KEYS = ["target", "src_layer", "src_channel", "dst_layer", "dst_channel", "influence_target"];

/**
 * The nodes and edges of one pair: only its row group of each partition file is fetched, and of the
 * edges only the influences of the strength indexes in `first` (default: all) and of the benign
 * original. The others are NaN until `loadRest()` reads them (docs/FORMAT.md: one column per
 * condition, so the first graph reads 3 of a pair's 12 influence columns at 10 strengths).
 */
export async function loadPair(root: string, manifest: Manifest, pair: PairRow, first?: number[]): Promise<PairData> {
  const layerIndex = new Map(manifest.layers.map((l, i) => [l.name, i]));
  const nodesRel = paths.part("nodes", pair.original, pair.part);
  const edgesRel = paths.part("edges", pair.original, pair.part);
  const S = manifest.strengths.length;
  const all = Array.from({ length: S + 1 }, (_, i) => i);
  const wanted = first === undefined ? all : [...new Set([0, ...first.filter((s) => Number.isInteger(s) && s >= 0 && s <= S)])];
  const [nodeRows, edgeRows] = await Promise.all([
    readRows(
      root,
      nodesRel,
      ["target", "layer", "channel", "role", "importance_original", "importance_target", "importance_attacked", "exploited_mask", "effect"],
      { rowGroup: pair.rowGroup },
    ),
    readRows(root, edgesRel, [...EDGE_KEYS, ...wanted.map(influenceColumn)], { rowGroup: pair.rowGroup }),
  ]);
  const nodes: NodeRow[] = nodeRows.map((r) => {
    if (num(r.target) !== pair.target)
      throw new DataError(nodesRel, `row group ${pair.rowGroup} holds target ${num(r.target)}, not ${pair.target} (pair_index out of date?)`);
    const layer = String(r.layer);
    const li = layerIndex.get(layer);
    if (li === undefined) throw new DataError(nodesRel, `unknown layer ${layer} (not in manifest.json)`);
    const role = String(r.role);
    if (!ROLE_SET.has(role)) throw new DataError(nodesRel, `unknown role ${role}`);
    const att = numList(r.importance_attacked);
    if (att.length !== S) throw new DataError(nodesRel, `importance_attacked has ${att.length} values, expected ${S}`);
    return {
      id: `${layer}-${num(r.channel)}`,
      layer,
      layerIndex: li,
      channel: num(r.channel),
      role: role as Role,
      act: [num(r.importance_original), ...att],
      target: num(r.importance_target),
      exploitedMask: num(r.exploited_mask),
      effect: numList(r.effect),
    };
  });
  const edges: EdgeRow[] = edgeRows.map((r) => {
    if (num(r.target) !== pair.target)
      throw new DataError(edgesRel, `row group ${pair.rowGroup} holds target ${num(r.target)}, not ${pair.target}`);
    const li = layerIndex.get(String(r.src_layer));
    if (li === undefined) throw new DataError(edgesRel, `unknown layer ${String(r.src_layer)}`);
    const inf = new Array<number>(S + 1).fill(NaN);
    for (const s of wanted) inf[s] = num(r[influenceColumn(s)]);
    return {
      src: `${String(r.src_layer)}-${num(r.src_channel)}`,
      dst: `${String(r.dst_layer)}-${num(r.dst_channel)}`,
      srcLayerIndex: li,
      inf,
      infTarget: num(r.influence_target),
    };
  });
  let rest = all.filter((s) => !wanted.includes(s));
  const loadRest = async (): Promise<boolean> => {
    if (!rest.length) return false;
    // One read per run of adjacent columns: a read spanning an already-read column would fetch it again.
    const runs: number[][] = [];
    for (const s of rest) {
      const run = runs[runs.length - 1];
      if (run && run[run.length - 1] === s - 1) run.push(s);
      else runs.push([s]);
    }
    const parts = await Promise.all(runs.map((run) => readRows(root, edgesRel, run.map(influenceColumn), { rowGroup: pair.rowGroup })));
    parts.forEach((rows, k) => {
      if (rows.length !== edges.length) throw new DataError(edgesRel, `row group ${pair.rowGroup} changed while it was read`);
      rows.forEach((r, i) => {
        for (const s of runs[k]) edges[i].inf[s] = num(r[influenceColumn(s)]);
      });
    });
    rest = [];
    data.complete = true;
    return true;
  };
  const data: PairData = { original: pair.original, target: pair.target, nodes, edges, loadRest, complete: rest.length === 0 };
  return data;
}

/**
 * The pair's activation-patching rows (causal/, per strength, layer or "all", and set) and its
 * dose-response curves (causal_curve/): one more footer request and the pair's row group in each,
 * like nodes and edges. Read after the pair's graph is drawn.
 */
export async function loadCausal(root: string, pair: PairRow): Promise<CausalData> {
  const rel = paths.part("causal", pair.original, pair.part);
  const relCurve = paths.part("causal_curve", pair.original, pair.part);
  const [rows, curves] = await Promise.all([
    readRows(root, rel, ["target", "strength", "layer", "set", "n_neurons", "recovery", "null_stats", "matched", "noising"], {
      rowGroup: pair.rowGroup,
    }),
    readRows(root, relCurve, ["target", "strength", "layer", "order", "k", "recovery", "q05", "q95", "summary"], {
      rowGroup: pair.rowGroup,
    }),
  ]);
  const check = (file: string, r: Record<string, unknown>) => {
    if (num(r.target) !== pair.target) throw new DataError(file, `row group ${pair.rowGroup} holds target ${num(r.target)}, not ${pair.target}`);
  };
  const at = (xs: number[], i: number) => (xs[i] === undefined ? NaN : xs[i]);
  return {
    rows: rows.map((r) => {
      check(rel, r);
      const rec = numList(r.recovery);
      const nul = numList(r.null_stats);
      const mat = numList(r.matched);
      const noi = numList(r.noising);
      return {
        strength: num(r.strength),
        layer: String(r.layer),
        set: String(r.set),
        nNeurons: num(r.n_neurons),
        nImages: at(rec, 0),
        recovery: at(rec, 1),
        restored: at(rec, 3),
        defused: at(rec, 4),
        nullMean: at(nul, 0),
        nullQ05: at(nul, 2),
        nullQ95: at(nul, 3),
        nullPercentile: at(nul, 4),
        nullP: at(nul, 5),
        draws: at(nul, 6),
        matchedMean: at(mat, 0),
        matchedPercentile: at(mat, 2),
        noising: at(noi, 0),
        noisingNullMean: at(noi, 1),
        noisingPercentile: at(noi, 3),
      };
    }),
    curves: curves.map((r) => {
      check(relCurve, r);
      const summary = numList(r.summary);
      return {
        strength: num(r.strength),
        layer: String(r.layer),
        order: String(r.order),
        k: numList(r.k),
        recovery: numList(r.recovery),
        q05: numList(r.q05),
        q95: numList(r.q95),
        auc: at(summary, 0),
        k50: at(summary, 1),
      };
    }),
  };
}

// --- neuron atlas ---------------------------------------------------------------------------------------

export interface AtlasNeuron {
  id: string; // `${layer}-${channel}`
  layer: string;
  layerIndex: number;
  channel: number;
  /** position in atlas/neurons.parquet (layer order, then channel): the sort's tie-break */
  row: number;
  nDisplayed: number;
  nExploitedAny: number;
  /** per strength (0-based into manifest.strengths): pairs exploiting it at that strength */
  nExploited: number[];
  /** per strength: mean single-neuron recovery over the pairs where it was measured (NaN: none) */
  meanEffect: number[];
  /** pairs where it was tested alone against single random channels (causal rows neuron:<channel>) */
  nTested: number;
  /** its mean recovery in those tests, and its mean percentile among the random channels (NaN: none) */
  meanRecovery: number;
  nullPercentile: number;
  topOriginals: number[];
  topOriginalCounts: number[];
  topTargets: number[];
  topTargetCounts: number[];
}

const ATLAS_COLUMNS = [
  "layer",
  "channel",
  "n_displayed",
  "n_exploited_any",
  "n_exploited",
  "mean_effect",
  "n_tested",
  "mean_recovery",
  "null_percentile",
  "top_originals",
  "top_original_counts",
  "top_targets",
  "top_target_counts",
];
let atlasPromise: Promise<AtlasNeuron[]> | null = null;

/**
 * atlas/neurons.parquet (one row per neuron of the model: a few thousand rows whatever the number
 * of pairs), read once when the atlas page first opens.
 */
export function loadAtlas(root: string, manifest: Manifest): Promise<AtlasNeuron[]> {
  if (!atlasPromise) {
    const rel = paths.atlas;
    const p = (async () => {
      const layerIndex = new Map(manifest.layers.map((l, i) => [l.name, i]));
      const S = manifest.strengths.length;
      const rows = await readRows(root, rel, ATLAS_COLUMNS);
      return rows.map((r, i) => {
        const layer = String(r.layer);
        const li = layerIndex.get(layer);
        if (li === undefined) throw new DataError(rel, `unknown layer ${layer} (not in manifest.json)`);
        const nExploited = numList(r.n_exploited);
        const meanEffect = numList(r.mean_effect);
        if (nExploited.length !== S || meanEffect.length !== S)
          throw new DataError(rel, `row ${i}: n_exploited/mean_effect have ${nExploited.length}/${meanEffect.length} values, expected ${S}`);
        return {
          id: `${layer}-${num(r.channel)}`,
          layer,
          layerIndex: li,
          channel: num(r.channel),
          row: i,
          nDisplayed: num(r.n_displayed),
          nExploitedAny: num(r.n_exploited_any),
          nExploited,
          meanEffect,
          nTested: num(r.n_tested),
          meanRecovery: num(r.mean_recovery),
          nullPercentile: num(r.null_percentile),
          topOriginals: numList(r.top_originals),
          topOriginalCounts: numList(r.top_original_counts),
          topTargets: numList(r.top_targets),
          topTargetCounts: numList(r.top_target_counts),
        };
      });
    })();
    p.catch(() => {
      if (atlasPromise === p) atlasPromise = null;
    });
    atlasPromise = p;
  }
  return atlasPromise;
}

export interface ClassStats {
  /** per class id: per strength, the mean success rate of its pairs as the original (how easy to attack) */
  successAsOriginal: number[][];
  /** per class id: per strength, the mean success rate of the pairs into it (how easy to reach) */
  successAsTarget: number[][];
  nAsOriginal: number[];
  nAsTarget: number[];
}

let classStatsPromise: Promise<ClassStats> | null = null;

/** The per-class attack statistics columns of classes.parquet (only those column chunks are read). */
export function loadClassStats(root: string): Promise<ClassStats> {
  if (!classStatsPromise) {
    const p = (async () => {
      const rows = await readRows(root, paths.classes, ["n_as_original", "n_as_target", "success_as_original", "success_as_target"]);
      return {
        successAsOriginal: rows.map((r) => numList(r.success_as_original)),
        successAsTarget: rows.map((r) => numList(r.success_as_target)),
        nAsOriginal: rows.map((r) => num(r.n_as_original)),
        nAsTarget: rows.map((r) => num(r.n_as_target)),
      };
    })();
    p.catch(() => {
      if (classStatsPromise === p) classStatsPromise = null;
    });
    classStatsPromise = p;
  }
  return classStatsPromise;
}

// --- rankings ----------------------------------------------------------------------------------------------

export interface RankingInfo {
  key: string;
  rows: number;
  /** rows with a finite value (they come first; NaN rows last) */
  nValid: number;
}

export async function rankingInfo(root: string, key: string): Promise<RankingInfo> {
  const rel = paths.ranking(key);
  const { meta } = await openParquet(root, rel);
  checkColumns(rel, meta, ["original", "target", "value"]);
  const rows = Number(meta.num_rows);
  const nv = kvMetadata(meta, "bluff.n_valid");
  const nValid = nv === undefined ? NaN : Number(nv);
  if (!(Number.isInteger(nValid) && nValid >= 0 && nValid <= rows))
    throw new DataError(rel, `key-value metadata bluff.n_valid is ${nv === undefined ? "missing" : `"${nv}"`} (docs/FORMAT.md rankings/)`);
  return { key, rows, nValid };
}

/** Rows [start, end) of a ranking file, in file order (only the pages holding them are fetched). */
export async function readRanking(root: string, key: string, start: number, end: number): Promise<RankingRow[]> {
  if (end <= start) return [];
  const rows = await readRows(root, paths.ranking(key), ["original", "target", "value"], {
    rowStart: start,
    rowEnd: end,
    useOffsetIndex: true,
  });
  return rows.map((r) => ({ original: num(r.original), target: num(r.target), value: num(r.value) }));
}

// --- class-by-class overview ------------------------------------------------------------------------------

export const OVERVIEW_MISSING = 255;
export const OVERVIEW_SCALE = 254;

export interface Overview {
  n: number;
  sIndex: number;
  /** n x n bytes, row = original, column = target: round(254 x rate), 255 = not computed */
  cells: Uint8Array;
}

const overviews = new Map<number, Promise<Overview>>();

/** The success matrix at strength index sIndex (0-based): one row group of overview/success.parquet. */
export function loadOverview(root: string, n: number, sIndex: number): Promise<Overview> {
  let p = overviews.get(sIndex);
  if (!p) {
    const rel = paths.overview;
    p = (async () => {
      const { meta } = await openParquet(root, rel);
      if (meta.row_groups.length <= sIndex)
        throw new DataError(rel, `has ${meta.row_groups.length} row groups, expected one per strength (docs/FORMAT.md overview/)`);
      if (Number(meta.row_groups[sIndex].num_rows) !== n)
        throw new DataError(rel, `row group ${sIndex} has ${Number(meta.row_groups[sIndex].num_rows)} rows, expected one per class (${n})`);
      const rows = await readRows(root, rel, ["success"], { rowGroup: sIndex, utf8: false });
      const cells = new Uint8Array(n * n);
      rows.forEach((r, o) => {
        const b = r.success;
        const bytes = b instanceof Uint8Array ? b : typeof b === "string" ? new TextEncoder().encode(b) : null;
        if (!bytes || bytes.length !== n) throw new DataError(rel, `row ${o} of row group ${sIndex}: success is not ${n} bytes`);
        cells.set(bytes, o * n);
      });
      return { n, sIndex, cells };
    })();
    p.catch(() => overviews.delete(sIndex));
    overviews.set(sIndex, p);
  }
  return p;
}

// --- neuron assets --------------------------------------------------------------------------------------------

let assetsPromise: Promise<Map<string, NeuronAssets>> | null = null;

/**
 * neurons/index.parquet, read on the first hover. A failed read is not remembered: the next call
 * (the next hover) tries again.
 */
export function loadAssets(root: string): Promise<Map<string, NeuronAssets>> {
  if (!assetsPromise) {
    const p = (async () => {
      const out = new Map<string, NeuronAssets>();
      const rows = await readRows(root, paths.assetIndex, ["layer", "channel", "kind", "rank", "path"]);
      const sorted = rows.slice().sort((a, b) => num(a.rank) - num(b.rank));
      for (const r of sorted) {
        const id = `${String(r.layer)}-${num(r.channel)}`;
        let a = out.get(id);
        if (!a) out.set(id, (a = { patches: [] }));
        const url = joinUrl(root, String(r.path));
        if (r.kind === "feature_vis") a.featureVis = url;
        else if (r.kind === "patch") a.patches.push(url);
      }
      return out;
    })();
    p.catch(() => {
      if (assetsPromise === p) assetsPromise = null;
    });
    assetsPromise = p;
  }
  return assetsPromise;
}

/** Where the results are: ?root=..., else <meta name="bluff-root"> (the page `bluff publish` switches last),
 * else config.json's "root" next to index.html, else "../". */
export async function resolveRoot(param: string | null): Promise<string> {
  const base = new URL(".", window.location.href);
  const pinned = param || document.querySelector<HTMLMetaElement>('meta[name="bluff-root"]')?.content;
  if (pinned) return new URL(pinned.endsWith("/") ? pinned : pinned + "/", base).href;
  try {
    const res = await fetch(new URL("config.json", base).href, { cache: "no-cache" });
    if (res.ok) {
      const cfg = (await res.json()) as { root?: string };
      if (typeof cfg.root === "string" && cfg.root) {
        const r = cfg.root.endsWith("/") ? cfg.root : cfg.root + "/";
        return new URL(r, base).href;
      }
    }
  } catch {
    // no config.json: the published layout <root>/viewer/
  }
  return new URL("../", base).href;
}
