import { ApiError, batchOutcome, predict, predictBatch } from "./api/client";
import type { OperatingPoint, SliceResult } from "./api/types";

export interface Job {
  id: string;
  file: File;
}

export interface Sink {
  result(id: string, result: SliceResult): void;
  error(id: string, status: number, detail: string | null): void;
}

/** Files per /predict/batch request. */
export const BATCH_CHUNK = 8;
/** Parallel single-file requests when the batch endpoint cannot be used. */
const CONCURRENCY = 2;

function fail(sink: Sink, id: string, err: unknown) {
  if (err instanceof ApiError) sink.error(id, err.status, err.detail);
  else sink.error(id, -1, err instanceof Error ? err.message : String(err));
}

async function one(job: Job, op: OperatingPoint, sink: Sink) {
  try {
    sink.result(job.id, await predict(job.file, op));
  } catch (err) {
    fail(sink, job.id, err);
  }
}

async function eachFile(jobs: Job[], op: OperatingPoint, sink: Sink) {
  const queue = [...jobs];
  const worker = async () => {
    for (let job = queue.shift(); job; job = queue.shift()) await one(job, op, sink);
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, jobs.length) }, worker));
}

/**
 * Analyse files: one file via /predict, several via /predict/batch (in chunks). When the
 * batch request as a whole is refused for a reason that one file may have caused (too large,
 * unprocessable) or the endpoint is missing, fall back to one request per file so that each
 * error lands next to the file that caused it.
 */
export async function analyse(jobs: Job[], op: OperatingPoint, sink: Sink): Promise<void> {
  if (jobs.length === 0) return;
  if (jobs.length === 1) return one(jobs[0]!, op, sink);
  for (let start = 0; start < jobs.length; start += BATCH_CHUNK) {
    const chunk = jobs.slice(start, start + BATCH_CHUNK);
    if (chunk.length === 1) {
      await one(chunk[0]!, op, sink);
      continue;
    }
    try {
      const { results } = await predictBatch(
        chunk.map((j) => j.file),
        op,
      );
      if (!Array.isArray(results) || results.length !== chunk.length) {
        await eachFile(chunk, op, sink);
        continue;
      }
      results.forEach((item, index) => {
        const job = chunk[index]!;
        const outcome = batchOutcome(item);
        if (outcome.ok) sink.result(job.id, outcome.value);
        else sink.error(job.id, outcome.error.status, outcome.error.detail);
      });
    } catch (err) {
      if (err instanceof ApiError && [404, 405, 413, 422].includes(err.status)) {
        await eachFile(chunk, op, sink);
      } else {
        chunk.forEach((job) => fail(sink, job.id, err));
      }
    }
  }
}
