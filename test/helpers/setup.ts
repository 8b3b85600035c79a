import "reflect-metadata";
import { afterAll } from "vitest";
import { runTeardown } from "./teardown.js";

afterAll(runTeardown);
