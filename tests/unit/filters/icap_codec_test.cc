#include "filters/icap_codec.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailgate::filters {
namespace {

struct Parsed {
  std::vector<IcapStatus> events;  // kHeaders, kDone, kError (body pieces joined)
  std::string body;
  size_t consumed = 0;
  IcapResponse r;
  std::string error;
};

// Feeds `in` in pieces of the given sizes (0 = the rest), looping over events.
Parsed feedSplit(std::string_view in, const std::vector<size_t>& sizes, IcapLimits limits = {}) {
  IcapResponseParser p(limits);
  Parsed out;
  size_t pos = 0, k = 0;
  while (pos < in.size()) {
    size_t n = k < sizes.size() && sizes[k] ? sizes[k] : in.size() - pos;
    k++;
    n = std::min(n, in.size() - pos);
    std::string_view chunk = in.substr(pos, n);
    bool stop = false;
    while (!chunk.empty() || false) {
      const IcapFeed f = p.feed(chunk);
      EXPECT_LE(f.consumed, chunk.size());
      chunk.remove_prefix(f.consumed);
      pos += f.consumed;
      if (f.status == IcapStatus::kNeedMore) {
        EXPECT_TRUE(chunk.empty());
        break;
      }
      if (f.status == IcapStatus::kBody) {
        out.body.append(f.body);
        continue;
      }
      out.events.push_back(f.status);
      if (f.status == IcapStatus::kDone || f.status == IcapStatus::kError) {
        EXPECT_EQ(p.feed(chunk).consumed, 0u);
        stop = true;
        break;
      }
    }
    if (stop) break;
  }
  out.consumed = pos;
  out.r = p.response();
  out.error = std::string(p.error());
  return out;
}

Parsed whole(std::string_view in) { return feedSplit(in, {}); }

Parsed byteByByte(std::string_view in) { return feedSplit(in, std::vector<size_t>(in.size(), 1)); }

Parsed randomSplits(std::string_view in, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<size_t> sizes;
  for (size_t total = 0; total < in.size();) {
    size_t n = 1 + rng() % 17;
    sizes.push_back(n);
    total += n;
  }
  return feedSplit(in, sizes);
}

// Every way of feeding gives the same result.
Parsed all(std::string_view in) {
  Parsed a = whole(in);
  for (const Parsed& b : {byteByByte(in), randomSplits(in, 1), randomSplits(in, 7)}) {
    EXPECT_EQ(a.events, b.events);
    EXPECT_EQ(a.body, b.body);
    EXPECT_EQ(a.consumed, b.consumed);
    EXPECT_EQ(a.r.code, b.r.code);
    EXPECT_EQ(a.r.http_header, b.r.http_header);
    EXPECT_EQ(a.error, b.error);
  }
  return a;
}

TEST(IcapUrlTest, ParsesNumericHostsAndDefaultPort) {
  IcapUrl u;
  std::string why;
  ASSERT_TRUE(parseIcapUrl("icap://127.0.0.1/avscan", &u, &why)) << why;
  EXPECT_EQ(u.host, "127.0.0.1");
  EXPECT_EQ(u.port, 1344);
  EXPECT_EQ(u.service, "avscan");
  EXPECT_EQ(u.uri(), "icap://127.0.0.1:1344/avscan");
  EXPECT_EQ(u.address(), "tcp:127.0.0.1:1344");
  ASSERT_TRUE(parseIcapUrl("icap://[::1]:11344/srv_clamav", &u, &why)) << why;
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 11344);
  EXPECT_EQ(u.address(), "tcp:[::1]:11344");
  EXPECT_EQ(u.uri(), "icap://[::1]:11344/srv_clamav");
}

TEST(IcapUrlTest, RefusesNamesBadPortsAndMissingService) {
  IcapUrl u;
  std::string why;
  EXPECT_FALSE(parseIcapUrl("http://127.0.0.1/x", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://localhost/x", &u, &why));
  EXPECT_NE(why.find("numeric"), std::string::npos);
  EXPECT_FALSE(parseIcapUrl("icap://127.0.0.1:0/x", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://127.0.0.1:70000/x", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://127.0.0.1:/x", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://127.0.0.1", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://127.0.0.1/", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://127.0.0.1/a b", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://[::1/x", &u, &why));
  EXPECT_FALSE(parseIcapUrl("icap://[fe80::zz]/x", &u, &why));
}

TEST(IcapRequestTest, OptionsAndRespmodHead) {
  IcapUrl u;
  std::string why;
  ASSERT_TRUE(parseIcapUrl("icap://10.0.0.1:1344/echo", &u, &why));
  EXPECT_EQ(icapOptionsRequest(u),
            "OPTIONS icap://10.0.0.1:1344/echo ICAP/1.0\r\nHost: 10.0.0.1:1344\r\nUser-Agent: mailgate\r\n"
            "Encapsulated: null-body=0\r\n\r\n");
  const std::string http = std::string(icapHttpHeader(IcapMethod::kRespmod));
  EXPECT_EQ(http, "HTTP/1.1 200 OK\r\nContent-Type: message/rfc822\r\n\r\n");
  EXPECT_EQ(icapModRequestHead(IcapMethod::kRespmod, u, 1024, true),
            "RESPMOD icap://10.0.0.1:1344/echo ICAP/1.0\r\nHost: 10.0.0.1:1344\r\nUser-Agent: mailgate\r\n"
            "Allow: 204\r\nPreview: 1024\r\nEncapsulated: res-hdr=0, res-body=" +
                std::to_string(http.size()) + "\r\n\r\n" + http);
  const std::string req = icapModRequestHead(IcapMethod::kReqmod, u, std::nullopt, false);
  EXPECT_EQ(req.find("Allow:"), std::string::npos);
  EXPECT_EQ(req.find("Preview:"), std::string::npos);
  EXPECT_NE(req.find("Encapsulated: req-hdr=0, req-body=" + std::to_string(icapHttpHeader(IcapMethod::kReqmod).size())),
            std::string::npos);
  EXPECT_NE(req.find("\r\n\r\nPOST / HTTP/1.1\r\n"), std::string::npos);
}

TEST(IcapRequestTest, Chunks) {
  std::string out;
  icapAppendChunk("", &out);
  EXPECT_EQ(out, "");
  icapAppendChunk(std::string(26, 'x'), &out);
  EXPECT_EQ(out, "1a\r\n" + std::string(26, 'x') + "\r\n");
  out.clear();
  icapAppendLastChunk(true, &out);
  EXPECT_EQ(out, "0; ieof\r\n\r\n");
  out.clear();
  icapAppendLastChunk(false, &out);
  EXPECT_EQ(out, "0\r\n\r\n");
}

TEST(IcapResponseTest, OptionsResponse) {
  const std::string in =
      "ICAP/1.0 200 OK\r\n"
      "Methods: RESPMOD, REQMOD\r\n"
      "Service: C-ICAP/0.5.10 server - Echo demo service\r\n"
      "ISTag: \"CI0001-XXXXXXXXX\"\r\n"
      "Transfer-Preview: *\r\n"
      "Options-TTL: 3600\r\n"
      "Max-Connections: 600\r\n"
      "Allow: 204, 206\r\n"
      "Preview: 1024\r\n"
      "Encapsulated: null-body=0\r\n\r\n";
  const Parsed r = all(in);
  ASSERT_EQ(r.events, std::vector<IcapStatus>{IcapStatus::kDone}) << r.error;
  EXPECT_EQ(r.consumed, in.size());
  EXPECT_EQ(r.r.code, 200);
  EXPECT_EQ(r.r.istag, "\"CI0001-XXXXXXXXX\"");
  EXPECT_EQ(r.r.options_ttl, 3600u);
  EXPECT_EQ(r.r.max_connections, 600u);
  EXPECT_EQ(r.r.preview, 1024u);
  EXPECT_TRUE(r.r.allow204);
  EXPECT_TRUE(r.r.offersMethod("RESPMOD"));
  EXPECT_TRUE(r.r.offersMethod("reqmod"));
  EXPECT_FALSE(r.r.infected());
}

TEST(IcapResponseTest, ContinueThen204OnOneStream) {
  const std::string in = "ICAP/1.0 100 Continue\r\n\r\nICAP/1.0 204 No Content\r\nISTag: x\r\nEncapsulated: null-body=0\r\n\r\n";
  IcapResponseParser p;
  IcapFeed f = p.feed(in);
  ASSERT_EQ(f.status, IcapStatus::kDone);
  EXPECT_EQ(p.response().code, 100);
  EXPECT_EQ(f.consumed, 25u);
  p.reset();
  f = p.feed(std::string_view(in).substr(25));
  ASSERT_EQ(f.status, IcapStatus::kDone);
  EXPECT_EQ(p.response().code, 204);
  EXPECT_EQ(p.response().istag, "x");
  const Parsed r = all(in.substr(0, 25));
  EXPECT_EQ(r.r.code, 100);
}

TEST(IcapResponseTest, ModifiedResponseWithBody) {
  const std::string http = "HTTP/1.1 200 OK\r\nContent-Type: message/rfc822\r\n\r\n";
  const std::string in = "ICAP/1.0 200 OK\r\nISTag: \"e\"\r\nEncapsulated: res-hdr=0, res-body=" +
                         std::to_string(http.size()) + "\r\n\r\n" + http +
                         "d\r\nSubject: hi\r\n\r\n5;name=x\r\n\nbody\r\n0\r\nTrailer: 1\r\n\r\nEXTRA";
  const Parsed r = all(in);
  ASSERT_EQ(r.events, (std::vector<IcapStatus>{IcapStatus::kHeaders, IcapStatus::kDone})) << r.error;
  EXPECT_EQ(r.consumed, in.size() - 5);
  EXPECT_EQ(r.body, "Subject: hi\r\n\nbody");
  EXPECT_EQ(r.r.http_header, http);
  EXPECT_EQ(r.r.httpStatus(), 200);
  EXPECT_TRUE(r.r.res_hdr);
  EXPECT_EQ(r.r.body, IcapResponse::Body::kRes);
  EXPECT_EQ(r.r.body_size, 18u);
  EXPECT_FALSE(r.r.ieof);
}

TEST(IcapResponseTest, ReqAndResHeaderSectionsKeepTheLast) {
  const std::string req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string res = "HTTP/1.1 403 Forbidden\r\n\r\n";
  const std::string in = "ICAP/1.0 200 OK\r\nEncapsulated: req-hdr=0, res-hdr=" + std::to_string(req.size()) +
                         ", res-body=" + std::to_string(req.size() + res.size()) + "\r\n\r\n" + req + res +
                         "3\r\nabc\r\n0; ieof\r\n\r\n";
  const Parsed r = all(in);
  ASSERT_EQ(r.events.back(), IcapStatus::kDone) << r.error;
  EXPECT_EQ(r.r.http_header, res);
  EXPECT_EQ(r.r.httpStatus(), 403);
  EXPECT_TRUE(r.r.ieof);
  EXPECT_EQ(r.body, "abc");
}

TEST(IcapResponseTest, InfectionHeaders) {
  // c-icap's virus_scan: 200 with a replacement page and the infection headers.
  const std::string http = "HTTP/1.0 403 Forbidden\r\nContent-Type: text/html\r\n\r\n";
  const std::string in =
      "ICAP/1.0 200 OK\r\n"
      "X-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Signature;\r\n"
      "X-Violations-Found: 1\r\n\t-\r\n\tEicar-Signature\r\n\t0\r\n\t0\r\n"
      "Encapsulated: res-hdr=0, res-body=" +
      std::to_string(http.size()) + "\r\n\r\n" + http + "9\r\nVIRUS FOU\r\n0\r\n\r\n";
  const Parsed r = all(in);
  ASSERT_EQ(r.events.back(), IcapStatus::kDone) << r.error;
  EXPECT_TRUE(r.r.infected());
  EXPECT_EQ(r.r.infectionName(), "Eicar-Signature");
  EXPECT_EQ(r.r.violations_found, "1\n-\nEicar-Signature\n0\n0");

  IcapResponse v;
  v.violations_found = "1\n-\nWorm.X\n0\n0";
  EXPECT_EQ(v.infectionName(), "Worm.X");
  v.virus_id = "Some.Name";
  EXPECT_EQ(v.infectionName(), "Some.Name");
  IcapResponse w;
  w.infection_found = "Type=0; Resolution=1";
  EXPECT_EQ(w.infectionName(), "Type=0; Resolution=1");
}

TEST(IcapResponseTest, ErrorStatusWithoutEncapsulated) {
  const Parsed r = all("ICAP/1.0 500 Server Error\r\n\r\n");
  ASSERT_EQ(r.events, std::vector<IcapStatus>{IcapStatus::kDone});
  EXPECT_EQ(r.r.code, 500);
  EXPECT_EQ(r.r.reason, "Server Error");
  EXPECT_FALSE(r.r.has_encapsulated);
}

TEST(IcapResponseTest, MalformedInputs) {
  for (const std::string& in : {
           std::string("HTTP/1.1 200 OK\r\n\r\n"),
           std::string("ICAP/1.0 2x0 OK\r\n\r\n"),
           std::string("ICAP/1.0 200 OK\n\r\n"),
           std::string("ICAP/1.0 200 OK\r\nno colon\r\n\r\n"),
           std::string("ICAP/1.0 200 OK\r\n folded-first\r\n\r\n"),
           std::string("ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0\r\n\r\n"),
           std::string("ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=5, res-body=0\r\n\r\n"),
           std::string("ICAP/1.0 200 OK\r\nEncapsulated: res-body=0, res-hdr=0\r\n\r\n"),
           std::string("ICAP/1.0 200 OK\r\nEncapsulated: foo=0\r\n\r\n"),
           std::string("ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\nzz\r\n"),
           std::string("ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\n3\r\nabcX\r\n"),
           std::string("ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\nfffffffffffff\r\n"),
           std::string("ICAP/1.0 200 O\0K\r\n\r\n", 21),
       }) {
    const Parsed r = all(in);
    ASSERT_FALSE(r.events.empty()) << in;
    EXPECT_EQ(r.events.back(), IcapStatus::kError) << in;
    EXPECT_FALSE(r.error.empty());
  }
}

TEST(IcapResponseTest, Limits) {
  IcapLimits l;
  l.max_line = 64;
  Parsed r = feedSplit("ICAP/1.0 200 OK\r\nX-Long: " + std::string(100, 'a') + "\r\n\r\n", {}, l);
  EXPECT_EQ(r.events.back(), IcapStatus::kError);
  l = IcapLimits();
  l.max_headers = 100;
  std::string many = "ICAP/1.0 200 OK\r\n";
  for (int i = 0; i < 10; ++i) many += "X-A: bbbbbbbbbbbbb\r\n";
  r = feedSplit(many + "\r\n", {}, l);
  EXPECT_EQ(r.events.back(), IcapStatus::kError);
  l = IcapLimits();
  l.max_body = 10;
  r = feedSplit("ICAP/1.0 200 OK\r\nEncapsulated: res-body=0\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", {}, l);
  EXPECT_EQ(r.events.back(), IcapStatus::kError);
  EXPECT_EQ(r.body, "12345678");
  l = IcapLimits();
  l.max_http_header = 10;
  r = feedSplit("ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=11\r\n\r\n", {}, l);
  EXPECT_EQ(r.events.back(), IcapStatus::kError);
}

}  // namespace
}  // namespace mailgate::filters
