/** A valid `$ota_upgrade` payload for tests. */
export const firmware = {
  url: "https://firmware.example/acme-1.1.bin",
  version: "1.1",
  size: 1000,
  md5: "0123456789abcdef0123456789abcdef",
  type: "firmware",
};
