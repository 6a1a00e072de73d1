#pragma once
// The policy's offline tools (no listener opened, no counter changed):
//   mailgate --explain FILE --listener L --client IP [--helo H] [--from A]
//            [--rcpt B]... [--user U] [--message FILE.eml]
//     prints, stage by stage, every ban, limit and rule looked at, whether it matched
//     and why, and the exact reply the client would get;
//   mailgate --test-policy FILE CASES.yaml
//     runs table-driven cases and ends with "N passed, N failed" (exit 1 when one
//     fails).
// Counters and bans are those of this process (empty): a limit shows the count one
// session would reach from nothing.
namespace mailgate::admin {

// argv[1] is "--explain" / "--test-policy". Return the process exit code.
int explainMain(int argc, char** argv);
int testPolicyMain(int argc, char** argv);

}  // namespace mailgate::admin
