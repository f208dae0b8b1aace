// Reading a results root (docs/FORMAT.md) over HTTP: JSON with fetch, Parquet with hyparquet over
// range requests. Every byte fetched is counted (window.__bluff.bytes) so tests and the benchmark
// can check that one pair costs tens of KB, not whole files.
import { parquetMetadataAsync, parquetReadObjects } from "hyparquet";
import type { AsyncBuffer, FileMetaData } from "hyparquet";

export interface LayerInfo {
  name: string;
  channels: number;
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
  finished?: string | null;
}

export interface ClassInfo {
  id: number;
  wnid: string;
  name: string;
  nImages: number;
  accuracy: number;
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
  rowGroup: number;
  /** j of nodes/edges `original=<o>/part-<j>.parquet` holding this pair */
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
  edges: EdgeRow[];
}

export interface NeuronAssets {
  featureVis?: string;
  patches: string[];
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

export interface Traffic {
  requests: number;
  bytes: number;
  /** bytes received per file, relative to the results root */
  byFile: Record<string, number>;
}

export const traffic: Traffic = { requests: 0, bytes: 0, byFile: {} };

function joinUrl(root: string, rel: string): string {
  return root.endsWith("/") ? root + rel : root + "/" + rel;
}

async function countedFetch(url: string, init?: RequestInit): Promise<Response> {
  traffic.requests += 1;
  const res = await fetch(url, init);
  return res;
}

async function bodyBytes(res: Response, rel: string): Promise<ArrayBuffer> {
  const buf = await res.arrayBuffer();
  traffic.bytes += buf.byteLength;
  traffic.byFile[rel] = (traffic.byFile[rel] ?? 0) + buf.byteLength;
  return buf;
}

const TAIL = 16 * 1024;

/**
 * A range-read file: one suffix request (`Range: bytes=-16384`) returns the footer and, in
 * Content-Range, the file size, so no HEAD is needed. Later slices are single range requests;
 * a server without range support (200) gets one whole download, reused for every slice.
 */
class RangeFile implements AsyncBuffer {
  byteLength = 0;
  private tailStart = 0;
  private tail: ArrayBuffer = new ArrayBuffer(0);
  private whole: ArrayBuffer | null = null;

  constructor(
    public readonly url: string,
    public readonly rel: string,
  ) {}

  async open(): Promise<void> {
    let res: Response;
    try {
      res = await countedFetch(this.url, { headers: { Range: `bytes=-${TAIL}` } });
    } catch (e) {
      throw new DataError(this.rel, `network error (${(e as Error).message})`);
    }
    if (res.status === 404 || res.status === 403) throw new DataError(this.rel, `not found (HTTP ${res.status})`);
    if (res.status === 416) {
      // an empty file: suffix ranges of 0-byte objects are unsatisfiable
      throw new DataError(this.rel, "empty file (0 bytes), not Parquet");
    }
    if (!res.ok) throw new DataError(this.rel, `HTTP ${res.status}`);
    const body = await bodyBytes(res, this.rel);
    if (res.status === 206) {
      const cr = res.headers.get("Content-Range") ?? "";
      const m = /bytes (\d+)-(\d+)\/(\d+)/.exec(cr);
      if (!m) throw new DataError(this.rel, "range response without a readable Content-Range header (check the CORS ExposeHeaders rule)");
      this.byteLength = Number(m[3]);
      this.tailStart = Number(m[1]);
      this.tail = body;
    } else {
      this.whole = body;
      this.byteLength = body.byteLength;
    }
  }

  async slice(start: number, end?: number): Promise<ArrayBuffer> {
    const stop = end ?? this.byteLength;
    if (this.whole) return this.whole.slice(start, stop);
    if (start >= this.tailStart) return this.tail.slice(start - this.tailStart, stop - this.tailStart);
    const res = await countedFetch(this.url, { headers: { Range: `bytes=${start}-${stop - 1}` } });
    if (res.status !== 206 && res.status !== 200) throw new DataError(this.rel, `HTTP ${res.status} for a byte range`);
    const body = await bodyBytes(res, this.rel);
    if (res.status === 200) {
      this.whole = body;
      return body.slice(start, stop);
    }
    return body;
  }
}

/** Parquet files opened so far (footers are read once per file and reused for every pair). */
const files = new Map<string, Promise<{ file: RangeFile; meta: FileMetaData }>>();

function openParquet(root: string, rel: string): Promise<{ file: RangeFile; meta: FileMetaData }> {
  const key = joinUrl(root, rel);
  let p = files.get(key);
  if (!p) {
    p = (async () => {
      const file = new RangeFile(key, rel);
      await file.open();
      let meta: FileMetaData;
      try {
        meta = await parquetMetadataAsync(file, { initialFetchSize: TAIL });
      } catch (e) {
        throw new DataError(rel, `not a readable Parquet file (${(e as Error).message})`);
      }
      return { file, meta };
    })();
    p.catch(() => files.delete(key)); // allow a retry after a failure
    files.set(key, p);
  }
  return p;
}

function checkColumns(rel: string, meta: FileMetaData, needed: string[]): void {
  const top = new Set(meta.schema.slice(1).map((s) => s.name));
  const missing = needed.filter((c) => !top.has(c));
  if (missing.length) throw new DataError(rel, `missing column(s) ${missing.join(", ")} (docs/FORMAT.md)`);
}

async function readRows(
  root: string,
  rel: string,
  columns: string[],
  rowGroup?: number,
): Promise<Record<string, unknown>[]> {
  const { file, meta } = await openParquet(root, rel);
  checkColumns(rel, meta, columns);
  let rowStart = 0;
  let rowEnd = Number(meta.num_rows);
  if (rowGroup !== undefined) {
    if (rowGroup < 0 || rowGroup >= meta.row_groups.length)
      throw new DataError(rel, `row group ${rowGroup} does not exist (the file has ${meta.row_groups.length})`);
    rowStart = 0;
    for (let i = 0; i < rowGroup; i++) rowStart += Number(meta.row_groups[i].num_rows);
    rowEnd = rowStart + Number(meta.row_groups[rowGroup].num_rows);
  }
  if (rowEnd <= rowStart) return [];
  try {
    return (await parquetReadObjects({ file, metadata: meta, columns, rowStart, rowEnd })) as Record<string, unknown>[];
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(rel, `cannot decode (${(e as Error).message})`);
  }
}

async function fetchJson(root: string, rel: string): Promise<unknown> {
  const url = joinUrl(root, rel);
  let res: Response;
  try {
    res = await countedFetch(url, { cache: "no-cache" });
  } catch (e) {
    throw new DataError(rel, `network error (${(e as Error).message}) at ${url}`);
  }
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

export async function loadManifest(root: string): Promise<Manifest> {
  const m = (await fetchJson(root, "manifest.json")) as Manifest;
  if (!m || typeof m !== "object") throw new DataError("manifest.json", "not a JSON object");
  if (m.schema_version !== 1)
    throw new DataError("manifest.json", `schema_version ${String(m.schema_version)} is not supported (this viewer reads 1)`);
  if (!Array.isArray(m.layers) || m.layers.length === 0) throw new DataError("manifest.json", "no layers");
  if (!Array.isArray(m.strengths) || m.strengths.length === 0) throw new DataError("manifest.json", "no strengths");
  return m;
}

export async function loadClasses(root: string): Promise<ClassInfo[]> {
  const rows = await readRows(root, "classes.parquet", ["class_id", "wnid", "name", "n_images", "accuracy"]);
  return rows.map((r) => ({
    id: num(r.class_id),
    wnid: String(r.wnid ?? ""),
    name: String(r.name ?? r.class_id),
    nImages: num(r.n_images),
    accuracy: num(r.accuracy),
  }));
}

export async function loadPairIndex(root: string): Promise<PairRow[]> {
  const { meta } = await openParquet(root, "pair_index.parquet");
  const hasPart = meta.schema.some((c) => c.name === "part");
  const rows = await readRows(root, "pair_index.parquet", [
    ...(hasPart ? ["part"] : []),
    "original",
    "target",
    "n_images",
    "n_success",
    "success_rate",
    "n_nodes",
    "n_edges",
    "n_exploited",
    "row_group",
  ]);
  return rows.map((r) => ({
    original: num(r.original),
    target: num(r.target),
    nImages: num(r.n_images),
    nSuccess: numList(r.n_success),
    successRate: numList(r.success_rate),
    nNodes: num(r.n_nodes),
    nEdges: num(r.n_edges),
    nExploited: num(r.n_exploited),
    rowGroup: num(r.row_group),
    part: hasPart ? num(r.part) : 0, // roots written before target chunking had only part-0
  }));
}

const ROLE_SET = new Set<string>(ROLES);

/** The nodes and edges of one pair: only its row group of each partition file is fetched. */
export async function loadPair(root: string, manifest: Manifest, pair: PairRow): Promise<PairData> {
  const layerIndex = new Map(manifest.layers.map((l, i) => [l.name, i]));
  const nodesRel = `nodes/original=${pair.original}/part-${pair.part}.parquet`;
  const edgesRel = `edges/original=${pair.original}/part-${pair.part}.parquet`;
  const [nodeRows, edgeRows] = await Promise.all([
    readRows(
      root,
      nodesRel,
      ["target", "layer", "channel", "role", "importance_original", "importance_target", "importance_attacked"],
      pair.rowGroup,
    ),
    readRows(
      root,
      edgesRel,
      ["target", "src_layer", "src_channel", "dst_layer", "dst_channel", "influence_original", "influence_target", "influence_attacked"],
      pair.rowGroup,
    ),
  ]);
  const S = manifest.strengths.length;
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
    };
  });
  const edges: EdgeRow[] = edgeRows.map((r) => {
    if (num(r.target) !== pair.target)
      throw new DataError(edgesRel, `row group ${pair.rowGroup} holds target ${num(r.target)}, not ${pair.target}`);
    const att = numList(r.influence_attacked);
    if (att.length !== S) throw new DataError(edgesRel, `influence_attacked has ${att.length} values, expected ${S}`);
    const li = layerIndex.get(String(r.src_layer));
    if (li === undefined) throw new DataError(edgesRel, `unknown layer ${String(r.src_layer)}`);
    return {
      src: `${String(r.src_layer)}-${num(r.src_channel)}`,
      dst: `${String(r.dst_layer)}-${num(r.dst_channel)}`,
      srcLayerIndex: li,
      inf: [num(r.influence_original), ...att],
      infTarget: num(r.influence_target),
    };
  });
  return { original: pair.original, target: pair.target, nodes, edges };
}

let assetsPromise: Promise<Map<string, NeuronAssets>> | null = null;

/** neurons/index.parquet, read once on the first hover; a missing index means "no images". */
export function loadAssets(root: string): Promise<Map<string, NeuronAssets>> {
  if (!assetsPromise) {
    assetsPromise = (async () => {
      const out = new Map<string, NeuronAssets>();
      let rows: Record<string, unknown>[];
      try {
        rows = await readRows(root, "neurons/index.parquet", ["layer", "channel", "kind", "rank", "path"]);
      } catch (e) {
        console.warn("no neuron assets:", (e as Error).message);
        return out;
      }
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
  }
  return assetsPromise;
}

/** Where the results are: ?root=..., else config.json's "root" next to index.html, else "../". */
export async function resolveRoot(param: string | null): Promise<string> {
  const base = new URL(".", window.location.href);
  if (param) return new URL(param.endsWith("/") ? param : param + "/", base).href;
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
