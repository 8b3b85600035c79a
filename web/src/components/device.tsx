import { Badge } from "./ui.js";

/** Online, offline (or unknown with an external broker), suspended: suspended wins. */
export function DeviceStateBadge({ suspended, online }: { suspended: boolean; online: boolean | null }) {
  if (suspended) return <Badge state="SUSPENDED" />;
  if (online === null) return <Badge state="UNKNOWN" label="presence unknown" />;
  return <Badge state={online ? "ONLINE" : "OFFLINE"} />;
}
