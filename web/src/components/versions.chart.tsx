import { BarElement, CategoryScale, Chart, LinearScale, Tooltip } from "chart.js";
import { Bar } from "react-chartjs-2";
import type { FleetQuery } from "../../../src/client/generated/graphql.js";

// Only what a bar chart needs: Chart.js is tree-shaken to these.
Chart.register(BarElement, CategoryScale, LinearScale, Tooltip);

const NOT_REPORTED = "not reported";

/** Devices by firmware version, most first: one horizontal bar each. */
export function VersionsChart({ versions, onPick }: { versions: FleetQuery["fleet"]["versions"]; onPick?: (version: string | null) => void }) {
  const shown = versions.slice(0, 12);
  const labels = shown.map((v) => v.firmwareVersion ?? NOT_REPORTED);
  return (
    <div className="chart" style={{ height: `${Math.max(120, shown.length * 34 + 40)}px` }} data-testid="versions-chart">
      <Bar
        data={{
          labels,
          datasets: [
            {
              label: "devices",
              data: shown.map((v) => v.devices),
              backgroundColor: shown.map((v) => (v.firmwareVersion === null ? "#c2c8d0" : "#2f6fde")),
              borderRadius: 3,
              maxBarThickness: 26,
            },
          ],
        }}
        options={{
          indexAxis: "y",
          maintainAspectRatio: false,
          animation: false,
          plugins: { tooltip: { callbacks: { label: (c) => ` ${c.formattedValue} devices` } } },
          scales: { x: { beginAtZero: true, ticks: { precision: 0 }, grid: { color: "#eef0f3" } }, y: { grid: { display: false } } },
          onClick: (_e, elements) => {
            const i = elements[0]?.index;
            if (i !== undefined && onPick) onPick(shown[i]?.firmwareVersion ?? null);
          },
        }}
      />
      {versions.length > shown.length && <p className="muted small">and {versions.length - shown.length} more versions</p>}
    </div>
  );
}
