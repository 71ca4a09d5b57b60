import Logging
import MeshKernel
import MeshProxy
import Testing

@Suite("Proxy configuration: checked as a whole, with precise errors")
struct ProxyConfigurationTests {
    private let good = TenantConfiguration(name: "shop", listener: Endpoint(.loopback, port: 15_001))

    @Test("a valid configuration passes; each kind of mistake names its tenant and field")
    func validation() throws {
        try ProxyConfiguration(tenants: [good, TenantConfiguration(name: "blog-2", listener: Endpoint(.loopback, port: 15_002))]).validate()
        func error(_ tenants: [TenantConfiguration]) -> ProxyConfigurationError? {
            do { try ProxyConfiguration(tenants: tenants).validate(); return nil } catch { return error }
        }
        var badName = good; badName.name = "Shop!"
        #expect(error([badName])?.field == "name")
        #expect(error([good, good])?.reason.contains("another tenant has this name") == true)
        var sameListener = good; sameListener.name = "other"
        let clash = error([good, sameListener])
        #expect(clash?.tenant == "other" && clash?.field == "listener" && clash?.reason.contains("shop") == true)
        var zeroPort = good; zeroPort.listener.port = 0
        #expect(error([zeroPort])?.field == "listener")
        var loop = good; loop.upstream = .fixed(good.listener)
        #expect(error([loop])?.reason.contains("loop") == true)
        var noConnections = good; noConnections.limits.maxConnections = 0
        #expect(error([noConnections])?.field == "limits.maxConnections")
        var tinyBuffer = good; tinyBuffer.limits.maxBufferedBytes = 10
        #expect(error([tinyBuffer])?.field == "limits.maxBufferedBytes")
        var tinyTotal = good; tinyTotal.limits.maxTotalBufferedBytes = 16_383
        #expect(error([tinyTotal])?.field == "limits.maxTotalBufferedBytes")
        tinyTotal.limits.maxTotalBufferedBytes = 16_384
        #expect(error([tinyTotal]) == nil, "a read's worth is enough")
        var noRate = good; noRate.limits.connectionsPerSecond = 0
        #expect(error([noRate])?.field == "limits.connectionsPerSecond")
        var tinyBandwidth = good; tinyBandwidth.limits.bytesPerSecond = 10
        #expect(error([tinyBandwidth])?.field == "limits.bytesPerSecond")
        var noWeight = good; noWeight.weight = 0
        #expect(error([noWeight])?.field == "weight")
        var noIdle = good; noIdle.idleTimeout = .zero
        #expect(error([noIdle])?.field == "idleTimeout")
        var hastyIdle = good; hastyIdle.idleTimeout = .milliseconds(99)
        #expect(error([hastyIdle])?.field == "idleTimeout", "a loop's sweeps would come more often than 40 a second")
        hastyIdle.idleTimeout = TenantConfiguration.shortestIdleTimeout
        #expect(error([hastyIdle]) == nil)
        #expect(error([badName])?.description.contains("tenant 'Shop!' name") == true)
    }

    @Test("a tenant bound to its datapath tenant is refused by a proxy that reads no datapath records (getsockopt tells no tenant), with its field")
    func datapathBindingNeedsRecords() {
        var bound = good
        bound.datapathTenant = 7
        do {
            _ = try MeshProxy(configuration: ProxyConfiguration(tenants: [bound]), logger: Logger(label: "test"))
            Issue.record("a binding that would check nothing was accepted")
        } catch {
            #expect(error.tenant == "shop" && error.field == "datapathTenant" && error.reason.contains("getsockopt"), "\(error)")
        }
    }

    @Test("a capacity's bounds are checked, with its field")
    func capacity() throws {
        func field(_ capacity: ProxyCapacity) -> String? {
            do { try ProxyConfiguration(tenants: [good], capacity: capacity).validate(); return nil } catch { return error.field }
        }
        #expect(field(ProxyCapacity(maxConcurrentExchanges: 100)) == nil)
        #expect(field(ProxyCapacity(maxConcurrentExchanges: 0)) == "capacity.maxConcurrentExchanges")
        #expect(field(ProxyCapacity(maxConcurrentExchanges: 1, maxQueuedPerTenant: -1)) == "capacity.maxQueuedPerTenant")
        #expect(field(ProxyCapacity(maxConcurrentExchanges: 1, maxQueueDelay: .zero)) == "capacity.maxQueueDelay")
        #expect(field(ProxyCapacity(maxConcurrentExchanges: 1, retryAfter: .milliseconds(500))) == "capacity.retryAfter")
        var heavy = good; heavy.weight = 10_001
        #expect(throws: ProxyConfigurationError.self) { try ProxyConfiguration(tenants: [heavy]).validate() }
    }

    @Test("a splice loop's polling budget is 0 to a millisecond")
    func spliceSpin() {
        func field(_ spin: Duration) -> String? {
            do { try ProxyConfiguration(tenants: [good], spliceSpin: spin).validate(); return nil } catch { return "\(error.tenant ?? "-") \(error.field)" }
        }
        func httpField(_ spin: Duration) -> String? {
            do { try ProxyConfiguration(tenants: [good], httpSpliceSpin: spin).validate(); return nil } catch { return "\(error.tenant ?? "-") \(error.field)" }
        }
        #expect(ProxyConfiguration(tenants: []).spliceSpin == .microseconds(3))
        #expect(ProxyConfiguration(tenants: []).httpSpliceSpin == .microseconds(1))
        #expect(field(.zero) == nil && field(.microseconds(3)) == nil && field(.milliseconds(1)) == nil)
        #expect(field(.microseconds(-1)) == "- spliceSpin")
        #expect(field(.microseconds(1_001)) == "- spliceSpin")
        #expect(httpField(.zero) == nil && httpField(.milliseconds(1)) == nil)
        #expect(httpField(.microseconds(-1)) == "- httpSpliceSpin")
        #expect(httpField(.microseconds(1_001)) == "- httpSpliceSpin")
    }
}
