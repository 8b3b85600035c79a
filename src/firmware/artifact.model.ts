/** An uploaded firmware image, as the server knows it: what `$ota_upgrade` needs, computed from the bytes. */
export interface Artifact {
  id: string;
  productName: string;
  version: string;
  type: string;
  size: number;
  md5: string;
  sha256: string;
  /** Unix milliseconds. */
  createdAt: number;
}

/** The strong ETag of an artifact's bytes. */
export const etagOf = (a: Pick<Artifact, "sha256">) => `"${a.sha256}"`;
